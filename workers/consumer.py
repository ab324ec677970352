"""The log side of the worker: task events from ``events.task`` through a consumer group.

Several worker processes join one group and share the topic's partitions. For each batch the
consumer writes what the pool must know to ``worker_tasks`` (new tasks, requeues,
cancellations) and hands tasks it can run at once to its own free slots; only then does it
commit the batch's offsets. A batch that fails is read again from its first offset (at least
once; every step is idempotent: a redelivered ``task.submitted`` inserts nothing, and the
stream decides whether anything may run). Each new task's row keeps the trace context the
record carried (its ``traceparent`` header: the relay's publish span; else the event's
metadata), so the run, whenever and wherever it happens, joins the submission's trace.
Other workers are woken through PostgreSQL NOTIFY: ``taskstream_work`` when due work was
queued, ``taskstream_cancel`` with a task id when a task was cancelled (its handler may run in
any process). New submissions may also arrive straight from the events table (workers/tail.py,
:meth:`TaskLogConsumer.take_now`); the log still delivers every one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from commands import task
from commands.handler import Loaded
from schemas.catalog import registry as codec_registry
from schemas.envelope import RecordedEvent
from schemas.tasks import TaskSubmitted
from taskstream.telemetry import traceparent_from_headers
from workers.leases import Claim, Leases, NewTask
from workers.runner import Worker

log = logging.getLogger("taskstream.workers")

WORK_CHANNEL = "taskstream_work"
CANCEL_CHANNEL = "taskstream_cancel"

Fanout = Callable[[Sequence[RecordedEvent]], Awaitable[None]]  # the webhook outbox


class TaskLogConsumer:
    def __init__(self, consumer: Any, worker: Worker, leases: Leases, pool: AsyncConnectionPool, fanout: Fanout | None = None) -> None:
        self._consumer, self._worker, self._leases, self._pool, self._fanout = consumer, worker, leases, pool, fanout
        self._committing: asyncio.Task[None] | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch, handle, commit. A batch's offsets (exactly its records', not the consumer's
        position) are committed in the background while the next batch is fetched and handled:
        the broker's answer to a commit is off the path of the next tasks. Commits stay in order
        (each waits for the one before) and only ever cover handled batches."""
        try:
            await self._run(stop)
        finally:
            if self._committing is not None:  # the last batch's commit, also when cancelled (bounded)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._committing), 5.0)

    async def _run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                batches = await self._consumer.getmany(timeout_ms=300, max_records=500)
            except Exception as exc:  # noqa: BLE001 - the client reconnects; keep polling
                log.warning("worker consumer: fetch failed: %r", exc)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
                continue
            if not batches:
                continue
            events, traces = [], {}
            for messages in batches.values():
                for m in messages:
                    event = RecordedEvent.from_json(json.loads(m.value))
                    events.append(event)
                    traceparent, _ = traceparent_from_headers(m.headers)
                    if traceparent:
                        traces[event.id] = traceparent
            try:
                await self.handle(events, traces)
            except Exception as exc:  # noqa: BLE001 - read the batch again; nothing was committed
                log.warning("worker consumer: batch failed, reading it again: %r", exc)
                for tp, messages in batches.items():
                    self._consumer.seek(tp, messages[0].offset)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
                continue
            offsets = {tp: messages[-1].offset + 1 for tp, messages in batches.items()}
            self._committing = asyncio.create_task(self._commit(self._committing, offsets))

    async def _commit(self, previous: asyncio.Task[None] | None, offsets: dict[Any, int]) -> None:
        if previous is not None:
            await previous  # never raises: see below
        try:
            await self._consumer.commit(offsets)
        except Exception as exc:  # noqa: BLE001 - a rebalance: the new owner gets the batch again (idempotent)
            log.warning("worker consumer: offsets not committed: %r", exc)

    async def handle(self, events: Sequence[RecordedEvent], traces: Mapping[uuid.UUID, str] | None = None) -> None:
        """``traces``: event id -> the ``traceparent`` its record's headers carried."""
        codec = codec_registry()
        submitted: list[tuple[RecordedEvent, TaskSubmitted]] = []
        requeued, cancelled = [], []
        for event in events:
            if event.type == "task.submitted":
                submitted.append((event, codec.decode(event)))  # type: ignore[arg-type]
            elif event.type == "task.requeued":
                requeued.append(uuid.UUID(str(event.data["task_id"])))
            elif event.type == "task.cancelled":
                cancelled.append(uuid.UUID(str(event.data["task_id"])))
        await self._ingest(submitted, traces or {})
        if requeued:
            await self._leases.requeue(requeued)
            await self.notify(WORK_CHANNEL, "")
        if cancelled:
            await self._leases.cancelled(cancelled)
            for task_id in cancelled:
                if not self._worker.cancel_local(task_id):
                    await self.notify(CANCEL_CHANNEL, str(task_id))
        if self._fanout is not None:
            await self._fanout(events)

    async def take_now(self, events: Sequence[RecordedEvent]) -> None:
        """Submissions read straight from the events table (workers/tail.py): ingest only those
        this worker has a free slot for, and run them; the rest are the log's to deliver."""
        codec = codec_registry()
        await self._ingest([(e, codec.decode(e)) for e in events if e.type == "task.submitted"], {}, only_mine=True)  # type: ignore[misc]

    async def _ingest(self, submitted: list[tuple[RecordedEvent, TaskSubmitted]], traces: Mapping[uuid.UUID, str], *,
                      only_mine: bool = False) -> None:  # fmt: skip
        if not submitted:
            return
        mine = self._worker.reserve(len(submitted))
        if only_mine:
            submitted = submitted[:mine]
        new = [
            NewTask(s.task_id, s.project_id, s.kind, s.priority, e.recorded_at, uuid.uuid4() if i < mine else None,
                    traces.get(e.id) or e.metadata.get("traceparent"))  # fmt: skip
            for i, (e, s) in enumerate(submitted)
        ]
        try:
            inserted = await self._leases.ingest(new)
        except BaseException:
            self._worker.release(mine)
            raise
        for (event, sub), row in zip(submitted[:mine], new[:mine], strict=True):
            if row.task_id in inserted and row.lease_id is not None:
                known = (Loaded(event.stream, task.evolve(None, sub), event.version), sub)
                self._worker.start(Claim(row.task_id, row.lease_id, False, row.traceparent), known)
            else:
                self._worker.release()
        if any(row.task_id in inserted for row in new[mine:]):
            await self.notify(WORK_CHANNEL, "")

    async def notify(self, channel: str, payload: str) -> None:
        async with self._pool.connection() as conn:
            await conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))


async def listen(database_url: str, worker: Worker, stop: asyncio.Event) -> None:
    """Wake the claim loop on new work and stop handlers of cancelled tasks, whoever consumed
    the event. Reconnects after a failure; the poll and the lease heartbeat cover the gaps."""
    while not stop.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
                await conn.execute(f"LISTEN {WORK_CHANNEL}")
                await conn.execute(f"LISTEN {CANCEL_CHANNEL}")
                while not stop.is_set():
                    async for note in conn.notifies(timeout=1.0):
                        if note.channel == CANCEL_CHANNEL:
                            with contextlib.suppress(ValueError):
                                worker.cancel_local(uuid.UUID(note.payload))
                        else:
                            worker.wake()
        except (psycopg.Error, OSError) as exc:
            log.warning("worker listener: %r; reconnecting", exc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
