"""Metrics computed from the real PostgreSQL: the pool's connections, the relay's backlog."""

from __future__ import annotations

import asyncio
import uuid

from prometheus_client import CollectorRegistry

from event_store.checkpoints import Checkpoints
from event_store.postgres import PostgresEventStore, make_pool
from schemas.envelope import ANY, NewEvent
from taskstream.telemetry import register_pool_metrics
from taskstream.wiring import count_backlog, relay_backlog_gauge


async def test_pool_metrics_follow_a_real_pool(database_url: str) -> None:
    pool = make_pool(database_url, min_size=1, max_size=1)
    await pool.open(wait=True)
    registry = CollectorRegistry()
    register_pool_metrics(registry, pool)

    def state(name: str) -> float | None:
        return registry.get_sample_value("taskstream_db_pool_connections", {"state": name})

    try:
        assert (state("size"), state("in_use"), state("max"), state("waiting")) == (1, 0, 1, 0)
        async with pool.connection():
            assert state("in_use") == 1 and state("idle") == 0
            waiter = asyncio.create_task(pool.getconn(timeout=5))
            async with asyncio.timeout(5):
                while state("waiting") != 1:
                    await asyncio.sleep(0.01)
        await pool.putconn(await waiter)
        assert state("in_use") == 0 and state("waiting") == 0
    finally:
        await pool.close()


async def test_relay_backlog_counts_events_past_the_checkpoint(store: PostgresEventStore) -> None:
    checkpoints = Checkpoints(store.pool)
    name = f"relay-{uuid.uuid4().hex[:12]}"
    await checkpoints.set(name, await store.head_position())
    assert await checkpoints.events_past(name) == 0
    first = await store.append(f"user-{uuid.uuid4()}", ANY, [NewEvent("user.touched", {}), NewEvent("user.touched", {})])
    await store.append(f"user-{uuid.uuid4()}", ANY, [NewEvent("user.touched", {})])
    # Other tests may write meanwhile: at least ours, and once the checkpoint passes them, fewer.
    past = await checkpoints.events_past(name)
    assert past >= 3
    assert first.last_position is not None
    await checkpoints.set(name, first.last_position)
    assert await checkpoints.events_past(name) <= past - 2

    registry = CollectorRegistry()
    gauge = relay_backlog_gauge(registry)
    stop = asyncio.Event()
    task = asyncio.create_task(count_backlog(checkpoints, name, gauge, stop, interval=0.05))
    async with asyncio.timeout(5):
        while registry.get_sample_value("taskstream_relay_lag_events") in (None, 0.0):
            await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert registry.get_sample_value("taskstream_relay_lag_events") >= 1


async def test_worker_consumer_lag_counts_submissions_no_worker_has_consumed(store: PostgresEventStore) -> None:
    from datetime import UTC, datetime

    from workers.lag import ConsumerLagMeter
    from workers.leases import Leases, NewTask

    meter = ConsumerLagMeter(store.pool)
    before = await meter.measure()
    task_id, project_id = uuid.uuid4(), uuid.uuid4()
    data = {"task_id": str(task_id), "project_id": str(project_id), "kind": "echo", "payload": {}, "priority": 5}
    await store.append(f"task-{task_id}", ANY, [NewEvent("task.submitted", data)])
    await store.append(f"task-{uuid.uuid4()}", ANY, [NewEvent("task.touched", {})])  # not a submission: no lag
    waiting = await meter.measure()
    assert waiting.events == before.events + 1 and waiting.seconds >= 0
    # a worker consumed it (wrote its row): the lag is gone again
    await Leases(store.pool, "lagging", 30).ingest([NewTask(task_id, project_id, "echo", 5, datetime.now(UTC), None)])
    assert (await meter.measure()).events == before.events
