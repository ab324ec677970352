"""A real single-node Apache Kafka 3.9 broker (KRaft, broker+controller) for tests.

The jars come from Maven Central through ``tests/kafka/pom.xml`` and are cached
under the caller's ``cache_dir`` (by default ``tests/kafka/.cache``)::

    with apache_kafka(tmp_path / "kafka", Path("tests/kafka/.cache")) as bootstrap:
        ...  # bootstrap == "127.0.0.1:PORT"

The broker runs in its own session and is killed (process group) on exit, and
by the kernel if the process that started it dies (``PR_SET_PDEATHSIG``).
Note that the death signal follows the *thread* that started it: enter the
context manager in a long-lived thread (the main thread), not a worker thread.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["KafkaUnavailable", "ToolsMissing", "apache_kafka", "fetch_jars", "POM"]

POM = Path(__file__).resolve().parent.parent / "kafka" / "pom.xml"
HOST = "127.0.0.1"
NODE_ID = 1

JVM_FLAGS = (
    "-Xmx512m",
    "-Xms256m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",  # C1 only: faster start, plenty for tests
    "-XX:-UsePerfData",
    "-Djava.awt.headless=true",
    "-Djava.net.preferIPv4Stack=true",
)

LOG4J = """\
log4j.rootLogger=INFO, out
log4j.appender.out=org.apache.log4j.ConsoleAppender
log4j.appender.out.layout=org.apache.log4j.PatternLayout
log4j.appender.out.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=INFO
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.request.logger=WARN
log4j.logger.kafka.log.LogCleaner=WARN
log4j.logger.kafka.log.LogManager=WARN
log4j.logger.kafka.cluster.Partition=WARN
log4j.logger.kafka.server.ReplicaFetcherManager=WARN
log4j.logger.kafka.server.ReplicaAlterLogDirsManager=WARN
log4j.logger.org.apache.kafka.storage.internals.log=WARN
log4j.logger.kafka.coordinator.group=WARN
log4j.logger.org.apache.kafka.coordinator.group=WARN
log4j.logger.org.apache.kafka.controller=WARN
log4j.logger.org.apache.kafka.raft=WARN
log4j.logger.org.apache.kafka.image=WARN
log4j.logger.org.apache.kafka.metadata=WARN
log4j.logger.org.apache.kafka.common.utils.AppInfoParser=WARN
log4j.logger.org.apache.kafka.common.config.AbstractConfig=WARN
log4j.logger.kafka.server.KafkaConfig=WARN
"""


class KafkaUnavailable(RuntimeError):
    """Apache Kafka cannot be fetched or started here; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ToolsMissing(KafkaUnavailable):
    """Java or Maven is not installed: the only reason the Apache Kafka leg may be skipped.
    Any other KafkaUnavailable (Maven failing, a broker that crashes or is not ready in time)
    is a failure."""


def _tail(text: str, lines: int = 40) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # Debian's mvn colours even with -B
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _file_tail(path: Path, lines: int = 60) -> str:
    try:
        return _tail(path.read_text(errors="replace"), lines)
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"


def _require(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        raise ToolsMissing(f"`{tool}` is not on PATH; Apache Kafka tests need Java 17+ and Maven")
    return found


def fetch_jars(cache_dir: Path, pom: Path = POM) -> Path:
    """Return ``cache_dir/libs`` holding the broker's jars, running Maven if needed.

    The cache is keyed on the pom's content hash (``libs.stamp``); a file lock
    makes concurrent callers (pytest-xdist workers) wait for one download.
    """
    cache_dir = Path(cache_dir).resolve()
    libs = cache_dir / "libs"
    stamp = cache_dir / "libs.stamp"
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()

    def fresh() -> bool:
        return (
            stamp.is_file()
            and stamp.read_text().strip() == digest
            and any(libs.glob("kafka_2.13-*.jar"))
        )

    if fresh():
        return libs
    _require("java")
    mvn = _require("mvn")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if fresh():
            return libs
        tmp = cache_dir / f"libs.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [
            mvn, "-B", "-q", "-U", "-f", str(pom),  # -U: retry cached download failures
            "dependency:copy-dependencies",
            f"-DoutputDirectory={tmp}",
            "-DincludeScope=runtime",
        ]  # fmt: skip
        try:
            proc = subprocess.run(
                cmd, cwd=cache_dir, capture_output=True, text=True, timeout=900, check=False
            )
        except subprocess.TimeoutExpired as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise KafkaUnavailable(f"Maven timed out fetching the Kafka jars after {exc.timeout:.0f} s") from exc
        if proc.returncode != 0 or not any(tmp.glob("kafka_2.13-*.jar")):
            shutil.rmtree(tmp, ignore_errors=True)
            raise KafkaUnavailable(
                f"Maven could not fetch the Kafka jars (exit {proc.returncode}):\n"
                + _tail(proc.stdout + proc.stderr)
            )
        stamp.unlink(missing_ok=True)
        shutil.rmtree(libs, ignore_errors=True)
        tmp.rename(libs)
        stamp.write_text(digest + "\n")
    return libs


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in socks:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _cluster_id() -> str:
    # Kafka's Uuid.toString(): url-safe base64 of 16 bytes, unpadded; never starts with "-".
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def _server_properties(port: int, cport: int, data_dir: Path) -> str:
    props = {
        "process.roles": "broker,controller",
        "node.id": str(NODE_ID),
        "controller.quorum.voters": f"{NODE_ID}@{HOST}:{cport}",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{cport}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": "4",
        "auto.create.topics.enable": "true",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "group.initial.rebalance.delay.ms": "0",
        "group.min.session.timeout.ms": "1000",  # the tests' consumer groups use 3 s, as on tansu
        "num.network.threads": "2",
        "num.io.threads": "4",
        "num.recovery.threads.per.data.dir": "1",
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by broker")
        buf += chunk
    return bytes(buf)


def _broker_ready(port: int, timeout: float = 2.0) -> bool:
    """Send a real Metadata v1 request; ready when it lists this broker and a controller."""
    client_id = b"taskstream-tests"
    # header: api_key=3 (Metadata), api_version=1, correlation_id, client_id; body: topics=[] (none)
    request = struct.pack(">hhih", 3, 1, 7, len(client_id)) + client_id + struct.pack(">i", 0)
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(request)) + request)
            (size,) = struct.unpack(">i", _recv_exact(sock, 4))
            data = _recv_exact(sock, size)
        correlation_id, n_brokers = struct.unpack_from(">ii", data, 0)
        offset, brokers = 8, list[tuple[int, int]]()
        for _ in range(n_brokers):
            node_id, host_len = struct.unpack_from(">ih", data, offset)
            offset += 6 + host_len
            broker_port, rack_len = struct.unpack_from(">ih", data, offset)
            offset += 6 + max(rack_len, 0)
            brokers.append((node_id, broker_port))
        (controller_id,) = struct.unpack_from(">i", data, offset)
    except (OSError, struct.error):
        return False
    return correlation_id == 7 and (NODE_ID, port) in brokers and controller_id >= 0


def _pdeathsig_prefix() -> list[str]:
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "SIGKILL", "--"] if setpriv else []


def _stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:  # also reaps anything else left in the group
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@contextmanager
def apache_kafka(
    work_dir: Path,
    cache_dir: Path,
    *,
    start_timeout: float = 90.0,
    stop_grace: float = 15.0,
) -> Iterator[str]:
    """Run a fresh single-node KRaft broker in ``work_dir``; yield ``"127.0.0.1:PORT"``.

    Logs go to ``work_dir/kafka.log``. Raises KafkaUnavailable if it cannot start.
    """
    libs = fetch_jars(cache_dir)
    java = _require("java")
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    port, cport = _free_ports(2)
    config = work_dir / "server.properties"
    config.write_text(_server_properties(port, cport, work_dir / "data"))
    log4j = work_dir / "log4j.properties"
    log4j.write_text(LOG4J)
    log_file = work_dir / "kafka.log"
    base = [java, *JVM_FLAGS, f"-Dlog4j.configuration={log4j.as_uri()}", "-cp", f"{libs}/*"]

    fmt = subprocess.run(
        [*base, "kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", str(config)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if fmt.returncode != 0:
        raise KafkaUnavailable(
            f"kafka-storage format failed (exit {fmt.returncode}):\n" + _tail(fmt.stdout + fmt.stderr)
        )

    with open(log_file, "ab") as out:
        proc = subprocess.Popen(
            [*_pdeathsig_prefix(), *base, "kafka.Kafka", str(config)],
            cwd=work_dir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + start_timeout
        while not _broker_ready(port):
            if proc.poll() is not None:
                raise KafkaUnavailable(
                    f"Kafka exited with code {proc.returncode} before it was ready; "
                    f"{log_file}:\n{_file_tail(log_file)}"
                )
            if time.monotonic() > deadline:
                raise KafkaUnavailable(
                    f"Kafka was not ready on {HOST}:{port} within {start_timeout:.0f} s; "
                    f"{log_file}:\n{_file_tail(log_file)}"
                )
            time.sleep(0.1)
        yield f"{HOST}:{port}"
    finally:
        _stop(proc, stop_grace)
