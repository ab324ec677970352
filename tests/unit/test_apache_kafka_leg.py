"""The Apache Kafka leg may be skipped only for missing tools; a broken broker is a failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.apache_kafka import KafkaUnavailable, ToolsMissing, apache_kafka



def test_no_java_on_path_is_the_skippable_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    with pytest.raises(ToolsMissing), apache_kafka(tmp_path / "k", tmp_path / "cache"):
        pass


def test_a_java_that_fails_is_not_a_missing_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("java", "mvn"):
        script = bin_dir / tool
        script.write_text("#!/bin/sh\necho 'broken on purpose' >&2\nexit 1\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    with pytest.raises(KafkaUnavailable) as info, apache_kafka(tmp_path / "k", tmp_path / "cache"):
        pass
    assert not isinstance(info.value, ToolsMissing)  # conftest turns this into a failure, not a skip
