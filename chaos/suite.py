"""The fault suite (`make chaos`): the write path under a steady HTTP load while things break.

Starts PostgreSQL (with the owner and app roles), Valkey and tansu on free loopback ports, the
gateway and the relay as real processes, and drives a steady write load through HTTP (task
submissions and cancellations, so streams have several versions). Meanwhile:

1. ``kill -9`` of the relay at random points, ``relay_kills`` times (a new relay is started at
   once; it takes the leader lock when the dead one's session is gone);
2. a broker restart (tansu keeps its log in memory: the log is lost);
3. a PostgreSQL restart (fast shutdown, same data);
4. a Redis outage (registrations keep going: the limiter fails open).

After the relay kills (before the broker restart loses that log) and again at the end, it waits
for the relay to catch up and checks that every event of the table reached the log and that in
the log, after dropping duplicates by event id, every stream reads 1, 2, 3, ... in order. At the
end also: every acknowledged write is in the events table, and every write was answered 2xx or
a clean 503 (with Retry-After), never anything else. Prints one JSON line of counts; exits 1 if a check failed.

``CHAOS_RELAY_KILLS`` (default 50) and ``CHAOS_WRITERS`` (default 8) set the size; the tests run
it small (tests/integration/test_chaos.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psycopg  # noqa: E402
from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: E402

from schemas.envelope import CATEGORIES  # noqa: E402
from taskstream import dbroles, embedded  # noqa: E402
from taskstream.migrate import upgrade  # noqa: E402


@dataclass
class Config:
    relay_kills: int = 50
    writers: int = 8
    kill_delay: tuple[float, float] = (0.3, 1.5)  # seconds between a relay's start and its kill
    outage: float = 1.5  # seconds each server stays down
    settle: float = 2.0  # seconds of load between faults
    catch_up_timeout: float = 120.0
    seed: int = 0


@dataclass
class Tally:
    acked: list[tuple[str, int, int]] = field(default_factory=list)  # (stream, version, position)
    statuses: Counter[str] = field(default_factory=Counter)
    unclean: list[str] = field(default_factory=list)


class Stack:
    """The servers and the two processes, with restart helpers."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.pg_port, self.redis_port, self.kafka_port, self.http_port = (embedded.free_port() for _ in range(4))
        self.secret = secrets.token_urlsafe(48)
        self.pg: embedded.ServerProcess | None = None
        self.valkey: embedded.ServerProcess | None = None
        self.tansu: embedded.ServerProcess | None = None
        self.gateway: embedded.ServerProcess | None = None
        self.relay: embedded.ServerProcess | None = None
        self.relay_starts = 0

    def start(self) -> None:
        self.start_postgres()
        assert self.pg is not None
        dbroles.bootstrap(self.pg.url)
        self.owner_url = dbroles.role_url(self.pg.url, dbroles.OWNER_ROLE)
        self.app_url = dbroles.role_url(self.pg.url, dbroles.APP_ROLE)
        upgrade(self.owner_url)
        self.start_valkey()
        self.start_tansu()
        self.gateway = self._spawn("gateway", "serve")
        embedded.wait_until(lambda: embedded.accepts(self.http_port), self.gateway, timeout=60)
        self.start_relay()

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DATABASE_URL": self.app_url,
            "MIGRATION_DATABASE_URL": self.owner_url,
            "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{self.kafka_port}",
            "HTTP_PORT": str(self.http_port),
            "JWT_SECRET": self.secret,
            "AUTH_RATE_LIMIT_PER_MINUTE": "1000000",
            "DB_LOCK_TIMEOUT_MS": "2000",
            "DB_POOL_TIMEOUT_SECONDS": "2",
            "RELAY_LOG_CHECK_INTERVAL": "0.5",
            "RELAY_LEADER_RETRY_SECONDS": "0.2",
            "BLOB_DIR": str(self.home / "blobs"),
            "METRICS_PORT": "0",  # the relay's /metrics on a free port
        }

    def _spawn(self, name: str, command: str) -> embedded.ServerProcess:
        log = self.home / "logs" / f"{name}.log"
        proc = embedded.spawn(name, [sys.executable, "-m", "taskstream.cli", command], log, env=self.env(), cwd=ROOT)
        return embedded.ServerProcess(name, "", 0, proc, log)

    def start_postgres(self) -> None:
        self.pg = embedded.start_postgres(self.home / "pg", self.pg_port, fsync=False)

    def start_valkey(self) -> None:
        self.valkey = embedded.start_valkey(self.home / "valkey", self.redis_port)

    def start_tansu(self) -> None:
        self.tansu = embedded.start_tansu(self.home / "tansu", self.kafka_port)

    def start_relay(self) -> None:
        self.relay = self._spawn("relay", "relay")
        self.relay_starts += 1

    def kill_relay(self) -> None:
        assert self.relay is not None
        os.killpg(self.relay.process.pid, signal.SIGKILL)  # kill -9, the whole process group
        self.relay.process.wait(10)

    def stop(self) -> None:
        for server in (self.relay, self.gateway, self.tansu, self.valkey, self.pg):
            if server is not None:
                server.stop()


async def _load(stack: Stack, tally: Tally, stop: asyncio.Event, writers: int, rng: random.Random) -> None:
    from gateway.auth import build_auth
    from taskstream.settings import Settings

    issuer, _ = build_auth(Settings(database_url="unused", jwt_secret=stack.secret))
    assert issuer is not None
    base = f"http://127.0.0.1:{stack.http_port}"

    async def call(client: httpx.AsyncClient, method: str, path: str, body: dict[str, object], token: str | None = None) -> httpx.Response | None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            response = await client.request(method, path, json=body, headers=headers)
        except httpx.HTTPError as exc:
            tally.statuses["transport-error"] += 1
            tally.unclean.append(f"{method} {path}: {exc!r}")
            return None
        status = response.status_code
        tally.statuses[str(status)] += 1
        if status in (200, 201, 202):
            answer = response.json()
            tally.acked.append((answer["stream"], answer["version"], answer["global_position"]))
            return response
        if status == 503 and response.headers.get("retry-after"):
            return None
        tally.unclean.append(f"{method} {path}: {status} {response.text[:200]}")
        return None

    async def writer(n: int) -> None:
        # Idle connections are dropped by the client (2 s) before uvicorn closes them (5 s): with
        # equal timeouts a request can go out on a connection the server is closing (ReadError).
        async with httpx.AsyncClient(base_url=base, timeout=30, limits=httpx.Limits(keepalive_expiry=2.0)) as client:
            user = project = None
            while not stop.is_set():
                if user is None:
                    email = f"chaos-{uuid.uuid4().hex[:12]}@example.org"
                    made = await call(client, "POST", "/v1/users", {"email": email, "display_name": f"W{n}", "password": "chaos-password-1"})
                    if made is not None:
                        user = issuer.issue(made.json()["id"], "member")
                elif project is None:
                    made = await call(client, "POST", "/v1/projects", {"name": f"chaos-{uuid.uuid4().hex[:8]}"}, user)
                    if made is not None:
                        project = made.json()["id"]
                else:
                    made = await call(client, "POST", f"/v1/projects/{project}/tasks", {"kind": "chaos", "payload": {"n": n}}, user)
                    if made is not None and rng.random() < 0.5:
                        await call(client, "POST", f"/v1/tasks/{made.json()['id']}/cancel", {"reason": "chaos"}, user)
                    if rng.random() < 0.02:
                        user = project = None  # a new user now and then: registrations go through Redis
                if made is None:
                    await asyncio.sleep(0.1)

    await asyncio.gather(*(writer(n) for n in range(writers)))


async def _faults(stack: Stack, config: Config, rng: random.Random, counts: Counter[str]) -> dict[str, object]:
    """Run the faults in turn; return the log check made after the relay kills (the broker
    restart that follows loses that log)."""
    def alive_relay() -> None:
        assert stack.relay is not None
        if not stack.relay.alive():  # it may exit on its own (PostgreSQL away at its start)
            stack.start_relay()

    await asyncio.sleep(config.settle)
    for _ in range(config.relay_kills):
        await asyncio.sleep(rng.uniform(*config.kill_delay))
        stack.kill_relay()
        counts["relay_kills"] += 1
        stack.start_relay()
    await asyncio.sleep(config.settle)
    after_kills = await _check_log(stack, config, quiet=0)  # under load: new records never stop

    assert stack.tansu is not None
    stack.tansu.stop()
    await asyncio.sleep(config.outage)
    stack.start_tansu()
    counts["broker_restarts"] += 1
    await asyncio.sleep(config.settle)
    alive_relay()

    assert stack.pg is not None
    stack.pg.stop()
    await asyncio.sleep(config.outage)
    stack.start_postgres()
    counts["postgres_restarts"] += 1
    await asyncio.sleep(config.settle)
    alive_relay()

    assert stack.valkey is not None
    stack.valkey.stop()
    await asyncio.sleep(config.outage)
    stack.start_valkey()
    counts["redis_outages"] += 1
    await asyncio.sleep(config.settle)
    alive_relay()
    return after_kills


async def _read_log(bootstrap: str, want: set[str], timeout: float, quiet: float) -> list[tuple[str, int, dict[str, object]]]:
    """The records of every topic, in partition order, (topic, partition, event): until every
    event of ``want`` was read and nothing new came for ``quiet`` seconds."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = []
        for category in CATEGORIES:
            topic = f"events.{category}"
            found = consumer.partitions_for_topic(topic) or set()
            if not found:
                await consumer._client._wait_on_metadata(topic)
                found = consumer.partitions_for_topic(topic) or set()
            partitions += [TopicPartition(topic, p) for p in sorted(found)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records: list[tuple[str, int, dict[str, object]]] = []
        seen: set[str] = set()
        loop = asyncio.get_running_loop()
        deadline, quiet_since = loop.time() + timeout, loop.time()
        while loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=300)
            for tp, messages in batches.items():
                for message in messages:
                    event = json.loads(message.value)
                    records.append((tp.topic, tp.partition, event))
                    seen.add(str(event["id"]))
                    quiet_since = loop.time()
            if want <= seen and loop.time() - quiet_since >= quiet:
                break
        return records
    finally:
        await consumer.stop()


async def _catch_up(stack: Stack, timeout: float) -> int:
    """Take the table's head now and wait until the relay's checkpoint reaches it; return it."""
    deadline = time.monotonic() + timeout
    head: int | None = None
    while True:
        if stack.relay is None or not stack.relay.alive():
            stack.start_relay()
        with contextlib.suppress(psycopg.Error):
            async with await psycopg.AsyncConnection.connect(stack.app_url, autocommit=True) as conn:
                if head is None:
                    head = (await (await conn.execute("SELECT COALESCE(max(global_position), 0) FROM events")).fetchone())[0]  # type: ignore[index]
                row = await (await conn.execute("SELECT position FROM checkpoints WHERE name = 'relay'")).fetchone()
                if row and row[0] >= head:
                    return int(head)  # type: ignore[arg-type]
        if time.monotonic() > deadline:
            raise TimeoutError("the relay did not catch up with the table")
        await asyncio.sleep(0.2)


async def _check_log(stack: Stack, config: Config, quiet: float = 2.0) -> dict[str, object]:
    """Every event up to the head (taken now) is in the log; every stream in the log reads
    1, 2, 3, ... after dropping duplicates by event id."""
    head = await _catch_up(stack, config.catch_up_timeout)
    async with await psycopg.AsyncConnection.connect(stack.app_url, autocommit=True) as conn:
        rows = await (await conn.execute("SELECT event_id::text FROM events WHERE global_position <= %s", (head,))).fetchall()
    ids = {row[0] for row in rows}
    records = await _read_log(f"127.0.0.1:{stack.kafka_port}", ids, timeout=60, quiet=quiet)
    first_seen: dict[str, list[int]] = defaultdict(list)
    seen: set[str] = set()
    duplicates = 0
    for _topic, _partition, event in records:
        event_id = str(event["id"])
        if event_id in seen:
            duplicates += 1
            continue
        seen.add(event_id)
        first_seen[str(event["stream"])].append(int(event["version"]))  # type: ignore[call-overload]
    out_of_order = [s for s, versions in first_seen.items() if versions != list(range(1, len(versions) + 1))]
    return {
        "head": head,
        "log_records": len(records),
        "log_duplicates": duplicates,
        "events_missing_in_log": len(ids - seen),
        "streams": len(first_seen),
        "streams_out_of_order": len(out_of_order),
    }


def _log_ok(log: dict[str, object]) -> bool:
    return log["events_missing_in_log"] == 0 and log["streams_out_of_order"] == 0


async def _check(stack: Stack, tally: Tally, config: Config, after_kills: dict[str, object]) -> dict[str, object]:
    log = await _check_log(stack, config)
    async with await psycopg.AsyncConnection.connect(stack.app_url, autocommit=True) as conn:
        rows = await (await conn.execute("SELECT stream_id, version, global_position FROM events")).fetchall()
    table = {(stream, version): position for stream, version, position in rows}
    missing_in_table = [a for a in tally.acked if table.get((a[0], a[1])) != a[2]]
    result: dict[str, object] = {
        "writes_acked": len(tally.acked),
        "answers": dict(sorted(tally.statuses.items())),
        "unclean_answers": len(tally.unclean),
        "events": len(rows),
        "acked_missing_in_table": len(missing_in_table),
        "log_after_relay_kills": after_kills,
        **log,
    }
    result["ok"] = bool(
        not missing_in_table and _log_ok(log) and _log_ok(after_kills) and not tally.unclean and tally.acked
    )
    if tally.unclean:
        result["unclean_examples"] = tally.unclean[:5]
    return result


async def run_suite(config: Config, home: Path) -> dict[str, object]:
    rng = random.Random(config.seed)
    stack = Stack(home)
    try:
        stack.start()  # in the main thread: children die with the thread that started them
        tally, counts, stop = Tally(), Counter[str](), asyncio.Event()
        load = asyncio.create_task(_load(stack, tally, stop, config.writers, rng))
        started = time.monotonic()
        try:
            after_kills = await _faults(stack, config, rng, counts)
        finally:
            stop.set()
            await load
        result = {"suite": "chaos", **counts, "relay_starts": stack.relay_starts, **await _check(stack, tally, config, after_kills)}
        result["seconds"] = round(time.monotonic() - started, 1)
        return result
    finally:
        stack.stop()


def main() -> int:
    config = Config(relay_kills=int(os.environ.get("CHAOS_RELAY_KILLS", 50)), writers=int(os.environ.get("CHAOS_WRITERS", 8)))
    home = Path(tempfile.mkdtemp(prefix="taskstream-chaos-"))
    home.chmod(0o755)  # the PostgreSQL user must traverse it
    try:
        result = asyncio.run(run_suite(config, home))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
