"""The tail of new submissions in PostgreSQL (workers/tail.py), with no broker at all: a worker
with free slots runs a task straight from the events table; one without free slots leaves it
to the log; a submission delivered by both paths runs once."""

from __future__ import annotations

import asyncio
import uuid

from commands import task
from commands.service import Service
from event_store.postgres import PostgresEventStore
from tests.integration.test_worker_leases import make_worker, submitted_task
from workers.consumer import TaskLogConsumer
from workers.runner import Worker
from workers.tail import tail_submissions


async def row_of(store: PostgresEventStore, task_id: uuid.UUID) -> tuple | None:
    async with store.pool.connection() as conn:
        cur = await conn.execute("SELECT status, owner FROM worker_tasks WHERE task_id = %s", (task_id,))
        return await cur.fetchone()


async def tailing(store: PostgresEventStore, database_url: str, worker: Worker, stop: asyncio.Event) -> asyncio.Task[None]:
    consumer = TaskLogConsumer(None, worker, worker.leases, store.pool)
    free = lambda: worker.config.concurrency - worker.busy  # noqa: E731
    running = asyncio.create_task(tail_submissions(database_url, consumer.take_now, free, stop, poll_seconds=0.2))
    await asyncio.sleep(0.5)  # LISTEN is in place and the tail starts at the head
    return running


async def test_a_submission_runs_straight_from_the_table(store: PostgresEventStore, database_url: str) -> None:
    worker = make_worker(store, f"tail-{uuid.uuid4().hex[:6]}")
    stop = asyncio.Event()
    running = await tailing(store, database_url, worker, stop)
    try:
        task_id, _ = await submitted_task(Service(store))
        async with asyncio.timeout(20):
            while [e.type for e in await store.read_stream(task.stream_for(task_id))][-1] != "task.succeeded":
                await asyncio.sleep(0.05)
        events = await store.read_stream(task.stream_for(task_id))
        assert [e.type for e in events] == ["task.submitted", "task.started", "task.succeeded"]
        assert events[1].data["worker_id"] == worker.config.worker_id
        # the log delivers the same submission later: nothing runs again
        await TaskLogConsumer(None, worker, worker.leases, store.pool).handle([events[0]])
        async with asyncio.timeout(10):
            while worker.busy:
                await asyncio.sleep(0.05)
        assert [e.type for e in await store.read_stream(task.stream_for(task_id))] == [e.type for e in events]
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)


async def test_a_worker_without_free_slots_leaves_it_to_the_log(store: PostgresEventStore, database_url: str) -> None:
    worker = make_worker(store, f"full-{uuid.uuid4().hex[:6]}")
    worker.reserve(worker.config.concurrency)  # every slot taken
    stop = asyncio.Event()
    running = await tailing(store, database_url, worker, stop)
    try:
        task_id, _ = await submitted_task(Service(store))
        control = make_worker(store, f"free-{uuid.uuid4().hex[:6]}")  # the control: a free worker takes it
        control_stop = asyncio.Event()
        control_running = await tailing(store, database_url, control, control_stop)
        try:
            other_id, _ = await submitted_task(Service(store))
            async with asyncio.timeout(20):
                while (row := await row_of(store, other_id)) is None:
                    await asyncio.sleep(0.05)
            assert row[1] == control.config.worker_id or row[0] == "done"
        finally:
            control_stop.set()
            await asyncio.wait_for(control_running, 10)
        assert await row_of(store, task_id) is None  # the full worker ingested nothing
        assert [e.type for e in await store.read_stream(task.stream_for(task_id))] == ["task.submitted"]
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
