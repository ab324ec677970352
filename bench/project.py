"""Projector catch-up over a backlog: events/s into all three read models, one process.

Backlog: BENCH_EVENTS (default 200,000) valid events written straight into the events table by
SQL (users, projects, and tasks that are submitted, started and succeeded: three events each),
then published to the log by the relay, before the projector starts. Measured: a fresh
``taskstream project`` process (faust, one consumer group, all three read models) from its first
committed batch to the moment every read model has reached the events table (``LagMeter``: no
event left unapplied); the group join before the first batch is left out and reported apart.

Baseline in the same run: one aiokafka consumer reading the same records of the same topics from
the beginning and decoding each value as JSON, without writing anything: the rate the log and
the Python client allow on this machine. ``ratio`` = projector events/s / baseline events/s.
Goal: >= 10,000 events/s.

Uses DATABASE_URL, REDIS_URL and KAFKA_BOOTSTRAP_SERVERS if all are set, else embedded
PostgreSQL (fsync on), Valkey and tansu in a temporary folder. Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

EVENTS = int(os.environ.get("BENCH_EVENTS", 200_000))
GOAL = 10_000
cpu_marks: dict[str, float | None] = {}  # the projector's CPU seconds at its first batch, when caught up


def backlog_sql(tasks: int, projects: int, users: int) -> list[str]:
    """Statements that write ``3 * tasks + projects + users`` valid events, stream by stream in
    version order (every task's submitted event comes before its started and succeeded ones)."""
    run = uuid.uuid4().hex[:8]
    return [
        # users
        f"""INSERT INTO events (stream_id, version, event_id, type, data)
        SELECT 'user-' || u, 1, gen_random_uuid(), 'user.registered',
               jsonb_build_object('user_id', u, 'email', 'b' || n || '-{run}@example.org', 'display_name', 'bench',
                                  'password_hash', '$argon2id$bench', 'role', 'member')
        FROM (SELECT n, md5('{run}u' || n)::uuid AS u FROM generate_series(1, {users}) AS n) AS s""",
        # projects, owned by the first user
        f"""INSERT INTO events (stream_id, version, event_id, type, data)
        SELECT 'project-' || p, 1, gen_random_uuid(), 'project.created',
               jsonb_build_object('project_id', p, 'owner_id', md5('{run}u1')::uuid, 'name', 'bench ' || n, 'description', '')
        FROM (SELECT n, md5('{run}p' || n)::uuid AS p FROM generate_series(1, {projects}) AS n) AS s""",
        *(
            f"""INSERT INTO events (stream_id, version, event_id, type, data)
            SELECT 'task-' || t, {version}, gen_random_uuid(), '{type_}', {data}
            FROM (SELECT n, md5('{run}t' || n)::uuid AS t, md5('{run}p' || (n % {projects} + 1))::uuid AS p
                  FROM generate_series(1, {tasks}) AS n) AS s"""
            for version, type_, data in (
                (1, "task.submitted", "jsonb_build_object('task_id', t, 'project_id', p, 'kind', 'echo', 'payload', jsonb_build_object('n', n), 'priority', 5, 'max_attempts', 3, 'timeout_seconds', 60)"),
                (2, "task.started", "jsonb_build_object('task_id', t, 'worker_id', 'bench', 'attempt', 1)"),
                (3, "task.succeeded", "jsonb_build_object('task_id', t, 'attempt', 1, 'result_ref', NULL, 'summary', 'ok')"),
            )
        ),
    ]  # fmt: skip


async def raw_consume_rate(bootstrap: str, topics: list[str], want: int) -> float:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                                max_partition_fetch_bytes=4 * 1024 * 1024, fetch_max_bytes=16 * 1024 * 1024)  # fmt: skip
    await consumer.start()
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or {0, 1, 2, 3})]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        seen = 0
        started = time.perf_counter()
        while seen < want:
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            if not batches and time.perf_counter() - started > 120:
                raise RuntimeError(f"the baseline consumer saw {seen} of {want} records")
            for messages in batches.values():
                for m in messages:
                    json.loads(m.value)
                seen += len(messages)
        return seen / (time.perf_counter() - started)
    finally:
        await consumer.stop()


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a process has used so far; None off Linux."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_caught_up(pool: Any, models: list[Any], proc: Any, timeout: float = 1200) -> tuple[float, float]:
    """(time of the first committed batch, time every model reached the table)."""
    from projections.lag import LagMeter

    meter = LagMeter(pool, models)
    first = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"the projector exited:\n{proc.log_tail()}")
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT count(*) FROM projection_tracking")
            (tracked,) = await cur.fetchone()
        if first is None and tracked:
            first = time.perf_counter()
            cpu_marks["first"] = cpu_seconds(proc.process.pid)
        if first is not None:
            lags = await meter.measure()
            if all(lag.events == 0 for lag in lags.values()):
                cpu_marks["done"] = cpu_seconds(proc.process.pid)
                return first, time.perf_counter()
        await asyncio.sleep(0.05 if first is None else 0.25)
    raise RuntimeError("the projector did not catch up in time")


def main() -> int:
    from event_store.postgres import PostgresEventStore
    from projections.catalog import MODELS
    from _servers import servers
    from taskstream import embedded
    from taskstream.settings import Settings

    folder = Path(tempfile.mkdtemp(prefix="taskstream-bench-project-"))
    started: list[embedded.ServerProcess] = []
    try:
        db_url, redis_url, kafka = servers(folder, started)
        tasks = max(1, (EVENTS - EVENTS // 500) // 3)
        projects = max(1, EVENTS // 1000)
        users = max(1, EVENTS - 3 * tasks - projects)
        import psycopg

        with psycopg.connect(db_url, autocommit=True) as conn:
            for statement in backlog_sql(tasks, projects, users):
                conn.execute(statement)
            (head,) = conn.execute("SELECT max(global_position) FROM events").fetchone()
        run = uuid.uuid4().hex[:8]
        settings = Settings(database_url=db_url, redis_url=redis_url, kafka_bootstrap_servers=kafka,
                            kafka_topic_prefix=f"bench{run}.", relay_checkpoint_name=f"relay-{run}",
                            projector_group_id=f"projector-{run}", projector_session_timeout=3.0, metrics_port=0)  # fmt: skip
        env = {**os.environ, **settings.to_env()}
        relay = embedded.ServerProcess("relay", "", 0, embedded.spawn("relay", [sys.executable, "-m", "taskstream.cli", "relay"], folder / "relay.log", env=env, cwd=ROOT), folder / "relay.log")
        started.append(relay)
        with psycopg.connect(db_url, autocommit=True) as conn:
            while True:
                row = conn.execute("SELECT position FROM checkpoints WHERE name = %s", (settings.relay_checkpoint_name,)).fetchone()
                if row and row[0] >= head:
                    break
                if not relay.alive():
                    raise RuntimeError(f"the relay exited:\n{relay.log_tail()}")
                time.sleep(0.2)
        relay.stop()
        topics = [f"{settings.kafka_topic_prefix}{c}" for c in ("user", "project", "task")]
        total = 3 * tasks + projects + users
        baseline = asyncio.run(raw_consume_rate(kafka, topics, total))

        spawned = time.perf_counter()
        proc = embedded.spawn("projector", [sys.executable, "-m", "taskstream.cli", "project"], folder / "projector.log", env=env, cwd=ROOT)
        projector = embedded.ServerProcess("projector", "", 0, proc, folder / "projector.log")
        started.append(projector)

        async def measure() -> tuple[float, float]:
            store = await PostgresEventStore.connect(db_url, min_size=1, max_size=2)
            try:
                return await wait_caught_up(store.pool, list(MODELS.values()), projector)
            finally:
                await store.close()

        first, done = asyncio.run(measure())
    finally:
        for server in reversed(started):
            server.stop()
        if os.environ.get("BENCH_KEEP_LOG"):
            shutil.copy(folder / "projector.log", os.environ["BENCH_KEEP_LOG"])
        shutil.rmtree(folder, ignore_errors=True)
    rate = total / (done - first)
    cpu = None if None in (cpu_marks.get("first"), cpu_marks.get("done")) else cpu_marks["done"] - cpu_marks["first"]
    print(json.dumps({
        "bench": "project",
        "unit": "events/s",
        "events": total,
        "projector_events_per_s": round(rate, 1),
        "seconds_catching_up": round(done - first, 2),
        "seconds_joining": round(first - spawned, 2),
        "baseline_raw_consume_events_per_s": round(baseline, 1),
        "ratio": round(rate / baseline, 3),
        # CPU the projector process spent per event while catching up (all its threads): unlike
        # the rate, it hardly moves when other processes share the machine.
        "projector_cpu_us_per_event": round(cpu / total * 1e6, 1) if cpu is not None else None,
        "goal": f"projector_events_per_s >= {GOAL}",
        "goal_met": rate >= GOAL,
        "cpus": os.cpu_count(),
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
