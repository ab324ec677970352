"""taskstream's own processes (relay, projector, gateway) as children of the test session.

Children, not tasks of the test loop: faust runs its consumer in a thread of its own, and a
process can be killed with SIGKILL like a crashed one. Each runs in its own session with a
parent-death signal, and ``stop`` ends its whole group, so nothing outlives the tests.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from taskstream import embedded
from taskstream.settings import Settings


def start(name: str, args: Sequence[str], settings: Settings, log_dir: Path) -> embedded.ServerProcess:
    env = {**os.environ, **settings.to_env()}
    log_path = log_dir / f"{name}.log"
    process = embedded.spawn(name, [sys.executable, "-m", "taskstream.cli", *args], log_path, env=env)
    return embedded.ServerProcess(name, "", 0, process, log_path)
