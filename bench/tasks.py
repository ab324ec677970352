"""No-op tasks end to end: taskstream's worker pool beside Celery 5 with a Redis broker.

taskstream: ``POST /v1/projects/{id}/tasks`` (kind ``echo``, empty payload) through the gateway
(``taskstream serve``), the relay to tansu, 2 ``taskstream work`` processes and one projector
(``taskstream project``); a task is done when ``succeeded`` is *visible in the read model*: the
row of the ``tasks`` table that ``GET /v1/tasks/{id}`` serves says ``succeeded``. The bench
watches that table (one query per BENCH_POLL_MS, default 10, over the phase's project's
succeeded rows from the oldest task not yet seen: each phase has a project of its own) rather than polling the HTTP API per task, which would load
the gateway with thousands of reads a second and measure the poller; the done time is when this
process first saw the row (so it includes up to one poll interval, a handicap of ours: Celery's
is the server's own ``date_done`` stamp). Every transition (submitted, started, succeeded) is
committed in PostgreSQL with fsync on before it shows there. Celery 5: ``send_task`` from this
process to the embedded Valkey as broker, 2 ``celery worker --pool solo`` processes
(``acks_late``), results in Valkey (no persistence); a task is done when its result is stored
(``date_done``).

Both run the same no-op on the same machine in the same run, one after the other:
1. throughput: BENCH_TASKS (default 2000) tasks submitted as fast as the client can (64
   connections for HTTP, one thread for Celery); figure = tasks / (last done - first submitted);
2. latency at a fixed rate: BENCH_RATE (default 200) tasks/s for BENCH_RATE_SECONDS (default
   10); figure = p50/p99 of (done - submitted) per task.

Our stage medians come from the events' server stamps (submitted -> started -> succeeded) and
the bench's sighting in the read model (succeeded -> visible).

Prints one JSON line with both throughputs, ratio = ours / Celery's (goal >= 1), and both
latency figures (goal: our p50 and p99 each <= 2x Celery's). Caveat: the load generator, both
systems and all servers share one 2-core machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

TASKS = int(os.environ.get("BENCH_TASKS", 2000))
RATE = float(os.environ.get("BENCH_RATE", 200))
RATE_SECONDS = float(os.environ.get("BENCH_RATE_SECONDS", 10))
CONCURRENCY = int(os.environ.get("BENCH_WORKER_CONCURRENCY", 32))
POLL = float(os.environ.get("BENCH_POLL_MS", 10)) / 1000
CONNECTIONS = 64
HOST = "127.0.0.1"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def utc_seconds(stamp: datetime) -> float:
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()


# --- taskstream ----------------------------------------------------------------------------


async def ours_setup(base: str, env: dict[str, str]) -> tuple[str, dict[str, str]]:
    import httpx

    from gateway.auth import build_auth
    from taskstream.settings import Settings

    issuer, _ = build_auth(Settings.from_env(env))
    assert issuer is not None
    admin = {"Authorization": f"Bearer {issuer.issue(str(uuid.uuid4()), 'admin', ttl_seconds=6 * 3600)}"}
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        deadline = time.monotonic() + 60
        while True:
            try:
                if (await client.get("/readyz")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway did not become ready")
            await asyncio.sleep(0.2)
        return base, admin


async def new_project(base: str, headers: dict[str, str]) -> tuple[str, str]:
    """A project of its own for one phase: (its tasks URL, its id)."""
    import httpx

    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        response = await client.post("/v1/projects", json={"name": f"bench-{uuid.uuid4().hex[:8]}"}, headers=headers)
        response.raise_for_status()
        project = str(response.json()["id"])
        return f"{base}/v1/projects/{project}/tasks", project


async def ours_submit(url: str, headers: dict[str, str], schedule: list[float], sent: dict[str, float], positions: dict[str, int]) -> None:
    """POST one task per scheduled offset (0 for all: as fast as 64 connections go); fill in
    task id -> wall time just before its request was sent, and task id -> the global position
    of its submission (the read model's ``created_position``), as the answers come."""
    import aiohttp

    body = json.dumps({"kind": "echo", "payload": {}}).encode()
    gate = asyncio.Semaphore(CONNECTIONS)
    start = time.monotonic()
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector, headers={**headers, "Content-Type": "application/json"}) as session:

        async def one(offset: float) -> None:
            delay = start + offset - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            async with gate:
                at = time.time()
                async with session.post(url, data=body) as response:
                    if response.status != 202:
                        raise RuntimeError(f"submission answered {response.status}: {await response.text()}")
                    answer = await response.json()
                    sent[str(answer["id"])] = at
                    positions[str(answer["id"])] = int(answer["global_position"])

        await asyncio.gather(*(one(o) for o in schedule))


async def ours_done(database_url: str, project: str, sent: dict[str, float], positions: dict[str, int],
                    submitting: asyncio.Event, timeout: float = 300) -> dict[str, float]:  # fmt: skip
    """Watch the ``tasks`` read model (the rows ``GET /v1/tasks/{id}`` serves) *while* the tasks
    are submitted, until every one is ``succeeded`` there; return id -> the wall time this
    process first saw it so. Each poll scans the project's succeeded rows from the oldest task
    not seen yet (index ``tasks_project_status``): a poll costs the window in flight."""
    import psycopg

    deadline = time.monotonic() + timeout
    done: dict[str, float] = {}
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        while True:
            pending = [positions[i] for i in list(positions) if i not in done]
            oldest = min(pending) if pending else max(positions.values(), default=0) + 1
            cur = await conn.execute(
                "SELECT task_id FROM tasks WHERE project_id = %s AND status = 'succeeded' AND created_position >= %s",
                (uuid.UUID(project), oldest),
            )
            seen = time.time()
            for (task_id,) in await cur.fetchall():
                done.setdefault(str(task_id), seen)
            if not submitting.is_set() and all(i in done for i in sent):
                return {i: done[i] for i in sent}
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(done)} of {len(sent)} tasks visible as succeeded in {timeout:.0f} s")
            await asyncio.sleep(POLL)


# --- Celery --------------------------------------------------------------------------------


def celery_submit(schedule: list[float]) -> dict[str, tuple[Any, float]]:
    from bench.baselines.celery_noop import app

    sent: dict[str, tuple[Any, float]] = {}
    start = time.monotonic()
    for offset in schedule:
        delay = start + offset - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        at = time.time()
        result = app.send_task("bench.noop")
        sent[result.id] = (result, at)
    return sent


def celery_done(sent: dict[str, tuple[Any, float]], timeout: float = 300) -> dict[str, float]:
    from bench.baselines.celery_noop import app

    deadline = time.monotonic() + timeout
    done: dict[str, float] = {}
    pending = list(sent)
    while pending:
        still = []
        for task_id in pending:
            meta = app.backend.get_task_meta(task_id)
            if meta.get("status") == "SUCCESS" and meta.get("date_done"):
                stamp = meta["date_done"]
                stamp = datetime.fromisoformat(stamp) if isinstance(stamp, str) else stamp
                done[task_id] = utc_seconds(stamp)
            else:
                still.append(task_id)
        pending = still
        if pending:
            if time.monotonic() > deadline:
                raise RuntimeError(f"Celery: {len(pending)} tasks not done after {timeout:.0f} s")
            time.sleep(0.25)
    return done


# --- figures -------------------------------------------------------------------------------


def throughput(sent_at: dict[str, float], done_at: dict[str, float]) -> float:
    return len(done_at) / (max(done_at.values()) - min(sent_at.values()))


def latencies(sent_at: dict[str, float], done_at: dict[str, float]) -> dict[str, float]:
    values = [max(0.0, done_at[i] - sent_at[i]) * 1000 for i in sent_at]
    return {"p50_ms": round(statistics.median(values), 1), "p99_ms": round(pct(values, 0.99), 1), "n": len(values)}


async def stages(database_url: str, done: dict[str, float]) -> dict[str, float]:
    """Medians of where the time went: submitted -> started -> succeeded (server stamps of the
    events) -> visible in the read model (this process's sighting)."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT stream_id, type, recorded_at FROM events WHERE stream_id = ANY(%s)", ([f"task-{i}" for i in done],)
        )
        stamps: dict[str, dict[str, float]] = {}
        for stream, type_, recorded in await cur.fetchall():
            stamps.setdefault(stream, {})[type_] = recorded.timestamp()
    queued = [s["task.started"] - s["task.submitted"] for s in stamps.values()]
    ran = [s["task.succeeded"] - s["task.started"] for s in stamps.values()]
    shown = [done[k.removeprefix("task-")] - s["task.succeeded"] for k, s in stamps.items()]
    return {"submitted_to_started_p50_ms": round(statistics.median(queued) * 1000, 1),
            "started_to_succeeded_p50_ms": round(statistics.median(ran) * 1000, 1),
            "succeeded_to_visible_p50_ms": round(statistics.median(shown) * 1000, 1)}  # fmt: skip


async def ours_phase(base: str, headers: dict[str, str], database_url: str, schedule: list[float]) -> tuple[dict[str, float], dict[str, float]]:
    """Submit on ``schedule`` into a new project while watching the read model; (sent, done)."""
    url, project = await new_project(base, headers)
    sent: dict[str, float] = {}
    positions: dict[str, int] = {}
    submitting = asyncio.Event()
    submitting.set()
    watcher = asyncio.create_task(ours_done(database_url, project, sent, positions, submitting))
    try:
        await ours_submit(url, headers, schedule, sent, positions)
    finally:
        submitting.clear()
    return sent, await watcher


async def run_ours(base: str, headers: dict[str, str], database_url: str) -> dict[str, Any]:
    await ours_phase(base, headers, database_url, [0.0] * 200)  # warm-up
    sent, done = await ours_phase(base, headers, database_url, [0.0] * TASKS)
    rated = [i / RATE for i in range(int(RATE * RATE_SECONDS))]
    sent_r, done_r = await ours_phase(base, headers, database_url, rated)
    return {"tasks_per_s": round(throughput(sent, done), 1), **await committed(database_url, sent), **latencies(sent_r, done_r),
            **await stages(database_url, done_r)}  # fmt: skip


async def committed(database_url: str, sent: dict[str, float]) -> dict[str, float]:
    """The throughput phase's rate counted at the workers' end (the last ``task.succeeded``
    committed) instead of the read model's: how much of the figure the projector's lag takes."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT max(recorded_at) FROM events WHERE type = 'task.succeeded' AND stream_id = ANY(%s)", ([f"task-{i}" for i in sent],)
        )
        row = await cur.fetchone()
    last = row[0].timestamp() if row and row[0] else max(sent.values())
    return {"succeeded_committed_per_s": round(len(sent) / (last - min(sent.values())), 1)}


def run_celery() -> dict[str, Any]:
    celery_done(celery_submit([0.0] * 200))  # warm-up
    sent = celery_submit([0.0] * TASKS)
    done = celery_done(sent)
    rated = [i / RATE for i in range(int(RATE * RATE_SECONDS))]
    sent_r = celery_submit(rated)
    done_r = celery_done(sent_r)
    plain = {k: v[1] for k, v in sent.items()}
    plain_r = {k: v[1] for k, v in sent_r.items()}
    return {"tasks_per_s": round(throughput(plain, done), 1), **latencies(plain_r, done_r)}


def main() -> int:
    from taskstream import embedded
    from _servers import cpu_seconds, servers

    def cpu(pid: int) -> float:
        return cpu_seconds(pid) or 0.0  # a process gone counts nothing

    folder = Path(tempfile.mkdtemp(prefix="taskstream-bench-tasks-"))
    started: list[embedded.ServerProcess] = []

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        database_url, redis_url, kafka = servers(folder, started)  # embedded, or the environment's URLs
        http_port = embedded.free_port()
        redis_base = redis_url.rsplit("/", 1)[0] if redis_url.count("/") > 2 else redis_url
        env = {
            **os.environ, "PYTHONPATH": str(ROOT), "DATABASE_URL": database_url, "REDIS_URL": redis_url,
            "KAFKA_BOOTSTRAP_SERVERS": kafka, "JWT_SECRET": secrets.token_urlsafe(48), "TASKSTREAM_DEV_MODE": "1",
            "HTTP_PORT": str(http_port), "BLOB_DIR": str(folder / "blobs"), "WORKER_METRICS_PORT": "0",
            "WORKER_SESSION_TIMEOUT_MS": "2000", "PROJECTOR_SESSION_TIMEOUT": "3", "METRICS_PORT": "0",
            "RATE_LIMIT_WRITE_PER_MINUTE": "0", "RATE_LIMIT_READ_PER_MINUTE": "0",  # a bench is one principal
            "CELERY_BROKER_URL": f"{redis_base}/1", "CELERY_RESULT_BACKEND": f"{redis_base}/2",
        }  # fmt: skip
        cli = [sys.executable, "-m", "taskstream.cli"]
        children = [("gateway", [*cli, "serve"]), ("relay", [*cli, "relay"]), ("projector", [*cli, "project"])]
        children += [(f"worker-{n}", [*cli, "work", "--concurrency", str(CONCURRENCY)]) for n in (1, 2)]
        celery = [sys.executable, "-m", "celery", "-A", "bench.baselines.celery_noop", "worker", "--pool", "solo", "--loglevel", "WARNING"]
        children += [(f"celery-{n}", [*celery, "-n", f"bench{n}@%h"]) for n in (1, 2)]
        for name, argv in children:
            proc = embedded.spawn(name, argv, folder / f"{name}.log", env=env, cwd=ROOT)
            started.append(embedded.ServerProcess(name, "", 0, proc, folder / f"{name}.log"))
        os.environ.update({k: env[k] for k in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")})
        url, headers = asyncio.run(ours_setup(f"http://{HOST}:{http_port}", env))
        pids = {s.name: s.process.pid for s in started}
        before = {n: cpu(p) for n, p in pids.items()}
        began = time.monotonic()
        ours = asyncio.run(run_ours(url, headers, database_url))
        elapsed = time.monotonic() - began
        ours["cpu_cores"] = {n: round((cpu(p) - before[n]) / elapsed, 2) for n, p in pids.items() if not n.startswith("celery")}
        before = {n: cpu(p) for n, p in pids.items()}
        began = time.monotonic()
        theirs = run_celery()
        elapsed = time.monotonic() - began
        theirs["cpu_cores"] = {n: round((cpu(p) - before[n]) / elapsed, 2) for n, p in pids.items() if n.startswith("celery") or n == "Valkey"}
        ratio = ours["tasks_per_s"] / theirs["tasks_per_s"]
        report = {
            "benchmark": "tasks", "tasks": TASKS, "rate_per_s": RATE, "rate_seconds": RATE_SECONDS, "worker_processes": 2,
            "taskstream_worker_concurrency": CONCURRENCY, "taskstream": ours, "celery": theirs, "ratio": round(ratio, 2),
            "p50_vs_celery": round(ours["p50_ms"] / max(theirs["p50_ms"], 0.1), 2),
            "p99_vs_celery": round(ours["p99_ms"] / max(theirs["p99_ms"], 0.1), 2),
            "goal": "ratio >= 1 and p50, p99 each <= 2x Celery's",
        }  # fmt: skip
        report["goal_met"] = ratio >= 1 and report["p50_vs_celery"] <= 2 and report["p99_vs_celery"] <= 2
        print(json.dumps(report), flush=True)
        return 0
    finally:
        for server in reversed(started):
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
