"""A worker pool for end-to-end tests: a relay in this process (its own topic prefix),
``taskstream work`` processes and, with ``projector=True``, a projector (``taskstream project``:
the read model the query API serves, fed through the broker under test), each in its own session so a
test can kill -9 one. Tests see outcomes as users do, through ``GET /v1/tasks/{id}``
(:meth:`Pool.wait_view`), and check exactly-once in the task's stream."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from commands import task
from commands.decider import fold
from event_store.checkpoints import Checkpoints
from event_store.kafka import ensure_topics
from event_store.postgres import PostgresEventStore
from event_store.relay import RelayConfig
from schemas.catalog import registry
from schemas.envelope import CATEGORIES, RecordedEvent
from taskstream.settings import Settings
from taskstream.wiring import build_relay
from tests.support.stack import serve_gateway  # noqa: F401 - the tests take it from here too
from taskstream import embedded

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    metrics_port: int
    log: Path

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Pool:
    store: PostgresEventStore
    env: dict[str, str]
    folder: Path
    workers: list[WorkerProcess] = field(default_factory=list)
    projector: WorkerProcess | None = None

    def spawn(self, concurrency: int = 2) -> WorkerProcess:
        port = embedded.free_port()
        log = self.folder / f"worker-{len(self.workers)}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(  # noqa: S603
                [sys.executable, "-m", "taskstream.cli", "work", "--concurrency", str(concurrency), "--metrics-port", str(port)],
                cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        worker = WorkerProcess(proc, port, log)
        self.workers.append(worker)
        return worker

    def by_worker_id(self, worker_id: str) -> WorkerProcess:
        pid = int(worker_id.split("-")[-2])
        return next(w for w in self.workers if w.process.pid == pid)

    async def events(self, task_id: str) -> list[RecordedEvent]:
        return await self.store.read_stream(f"task-{task_id}")

    async def state(self, task_id: str) -> task.TaskState | None:
        codec = registry()
        return fold(task.evolve, None, (codec.decode(e) for e in await self.events(task_id)))  # type: ignore[arg-type]

    def log_tails(self, lines: int = 15) -> str:
        procs = [*self.workers, *([self.projector] if self.projector else [])]
        return "\n".join(f"--- {w.log.name}:\n" + "\n".join(w.log.read_text(errors="replace").splitlines()[-lines:]) for w in procs)

    def spawn_projector(self) -> WorkerProcess:
        log = self.folder / "projector.log"
        env = {**self.env, "PROJECTOR_GROUP_ID": f"projector-{self.env['WORKER_GROUP']}", "METRICS_PORT": "0",
               "PROJECTOR_SESSION_TIMEOUT": "6"}  # fmt: skip
        proc = embedded.spawn("projector", [sys.executable, "-m", "taskstream.cli", "project"], log, env=env, cwd=ROOT)
        self.projector = WorkerProcess(proc, 0, log)
        return self.projector

    async def wait_status(self, task_id: str, *statuses: str, timeout: float = 60) -> list[RecordedEvent]:
        """Wait until the task's stream says one of ``statuses``; return its events."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    state = await self.state(task_id)
                    if state is not None and state.status in statuses:
                        return await self.events(task_id)
                    await asyncio.sleep(0.1)
        except TimeoutError:
            state = await self.state(task_id)
            raise AssertionError(f"task {task_id} is {state.status if state else None}, not {statuses}:\n{self.log_tails()}") from None

    async def wait_view(self, http: Any, headers: dict[str, str], task_id: str, *statuses: str, timeout: float = 60) -> dict[str, Any]:
        """Wait until ``GET /v1/tasks/{id}`` (the query API over the read model) says one of
        ``statuses``; return the task as it answered."""
        view: dict[str, Any] | None = None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    answer = await http.get(f"/v1/tasks/{task_id}", headers=headers)
                    if answer.status_code == 200:
                        view = answer.json()
                        if view["status"] in statuses:
                            return view
                    elif answer.status_code not in (404, 503):  # not projected yet; behind
                        raise AssertionError(f"GET /v1/tasks/{task_id}: {answer.status_code} {answer.text}")
                    await asyncio.sleep(0.1)
        except TimeoutError:
            state = await self.state(task_id)
            raise AssertionError(
                f"task {task_id}: the query API says {view and view['status']}, its stream {state and state.status}; "
                f"wanted {statuses}:\n{self.log_tails()}"
            ) from None

    async def wait_event(self, task_id: str, type_: str, count: int = 1, timeout: float = 60) -> list[RecordedEvent]:
        async with asyncio.timeout(timeout):
            while True:
                events = await self.events(task_id)
                if sum(e.type == type_ for e in events) >= count:
                    return events
                await asyncio.sleep(0.1)

    async def row(self, task_id: str) -> tuple[Any, ...] | None:
        async with self.store.pool.connection() as conn:
            cur = await conn.execute("SELECT status, attempts, last_error FROM worker_tasks WHERE task_id = %s", (uuid.UUID(task_id),))
            return await cur.fetchone()


@contextlib.asynccontextmanager
async def worker_pool(
    store: PostgresEventStore, database_url: str, bootstrap: str, folder: Path, *, workers: int = 2, concurrency: int = 2,
    projector: bool = False, redis_url: str | None = None, **env: str,
) -> AsyncIterator[Pool]:
    tag = uuid.uuid4().hex[:10]
    prefix = f"w{tag}."
    config = RelayConfig(topic_prefix=prefix, checkpoint_name=f"relay-{tag}", batch_size=200, poll_interval=0.5)
    checkpoints = Checkpoints(store.pool)
    await checkpoints.set(config.checkpoint_name, await store.head_position())
    await ensure_topics(bootstrap, [f"{prefix}{c}" for c in CATEGORIES])
    stop = asyncio.Event()
    relay = build_relay(
        Settings(database_url=database_url, kafka_bootstrap_servers=bootstrap, kafka_topic_prefix=prefix,
                 relay_checkpoint_name=config.checkpoint_name, relay_batch_size=config.batch_size),
        store,
    )  # fmt: skip
    relaying = asyncio.create_task(relay.run(stop))
    folder.mkdir(parents=True, exist_ok=True)
    pool = Pool(
        store,
        {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "DATABASE_URL": database_url,
            **({"REDIS_URL": redis_url} if redis_url else {}),  # the projector writes through to the gateway's read cache
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_TOPIC_PREFIX": prefix,
            "WORKER_GROUP": f"workers-{tag}",
            "WORKER_LEASE_SECONDS": "3",
            "WORKER_POLL_SECONDS": "0.3",
            "WORKER_RETRY_BASE_SECONDS": "0.2",
            "WORKER_RETRY_MAX_SECONDS": "1",
            "WORKER_SHUTDOWN_GRACE_SECONDS": "1",
            "WORKER_SESSION_TIMEOUT_MS": "6000",  # Apache Kafka refuses less (group.min.session.timeout.ms)
            "BLOB_DIR": str(folder / "blobs"),
            "WEBHOOK_ALLOW_LOOPBACK": "1",
            "WEBHOOK_BACKOFF_SCALE": "0.05",
            "WEBHOOK_TIMEOUT_SECONDS": "5",
            "WEBHOOK_DISABLE_AFTER": "3",
            **env,
        },
        folder,
    )
    try:
        if projector:
            pool.spawn_projector()
        for _ in range(workers):
            pool.spawn(concurrency)
        yield pool
    finally:
        for w in [*pool.workers, *([pool.projector] if pool.projector else [])]:
            w.stop()
        stop.set()
        await asyncio.wait_for(relaying, 10)


