"""The published event schemas (``schemas/published``) are what the code generates, every
version the registry knows stays published, and private fields are never in them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import jsonschema as validator
import pytest

from schemas import jsonschema
from schemas.catalog import EVENTS
from schemas.users import UserRegistered

ROOT = Path(__file__).resolve().parents[2]


def test_the_published_files_are_up_to_date() -> None:
    problems = jsonschema.stale_published()
    assert problems == [], "stale published schemas; run: python -m schemas.jsonschema --write\n" + "\n".join(problems)


def test_the_check_command_fails_on_a_stale_missing_or_left_over_file(tmp_path: Path) -> None:
    folder = tmp_path / "published"
    shutil.copytree(jsonschema.PUBLISHED_DIR, folder)
    assert jsonschema.stale_published(folder) == []
    (folder / "task.started.v1.json").write_text("{}\n")
    (folder / "task.cancelled.v1.json").unlink()
    (folder / "task.vanished.v1.json").write_text("{}\n")
    assert jsonschema.stale_published(folder) == ["missing task.cancelled.v1.json", "left over task.vanished.v1.json", "stale task.started.v1.json"]
    assert sorted(jsonschema.write_published(folder)) == ["task.cancelled.v1.json", "task.started.v1.json", "task.vanished.v1.json"]
    assert jsonschema.stale_published(folder) == []


def test_the_command_line_checks_the_repository() -> None:
    run = subprocess.run([sys.executable, "-m", "schemas.jsonschema", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def test_every_event_type_and_version_is_indexed_and_valid_json_schema() -> None:
    index = json.loads((jsonschema.PUBLISHED_DIR / jsonschema.INDEX).read_text())["schemas"]
    assert {(i["type"], i["schema_version"]) for i in index} == {(c.TYPE, v) for c in EVENTS for v in range(1, c.SCHEMA_VERSION + 1)}
    for item in index:
        schema = json.loads((jsonschema.PUBLISHED_DIR / item["file"]).read_text())
        validator.Draft202012Validator.check_schema(schema)
        assert schema["title"] == item["type"] and schema["x-schema-version"] == item["schema_version"]


def test_private_fields_are_left_out_and_published_data_validates() -> None:
    schema = json.loads((jsonschema.PUBLISHED_DIR / "user.registered.v1.json").read_text())
    assert "password_hash" in UserRegistered.model_fields  # the control: the event has it
    assert "password_hash" not in json.dumps(schema)
    data = {"user_id": "6f1c3c4e-0000-4000-8000-000000000001", "email": "a@example.org", "display_name": "A", "role": "member"}
    validator.Draft202012Validator(schema).validate(data)
    with pytest.raises(validator.ValidationError):
        validator.Draft202012Validator(schema).validate({**data, "password_hash": "$argon2id$..."})


class _RegisteredV2(UserRegistered):
    """A version 2 of an event type, as a helper adding an upcaster would make it."""

    SCHEMA_VERSION: ClassVar[int] = 2
    locale: str = "en"


def test_an_old_version_stays_published_when_a_type_moves_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "published"
    shutil.copytree(jsonschema.PUBLISHED_DIR, folder)
    v1 = (folder / "user.registered.v1.json").read_text()
    monkeypatch.setattr(jsonschema, "EVENTS", tuple(_RegisteredV2 if c is UserRegistered else c for c in EVENTS))
    assert "missing user.registered.v2.json" in jsonschema.stale_published(folder)
    jsonschema.write_published(folder)
    assert (folder / "user.registered.v1.json").read_text() == v1  # kept as published
    assert "locale" in json.loads((folder / "user.registered.v2.json").read_text())["properties"]
    (folder / "user.registered.v1.json").unlink()  # neither a file nor a kept class: refused
    with pytest.raises(ValueError, match="user.registered version 1"):
        jsonschema.stale_published(folder)
