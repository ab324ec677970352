"""Two relay processes' worth of ``run_relay`` over one table and one broker: only the leader
publishes; when it stops, the one waiting takes over from the checkpoint."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from event_store.checkpoints import Checkpoints
from event_store.kafka import ensure_topics
from event_store.postgres import PostgresEventStore
from schemas.envelope import ANY, CATEGORIES, NewEvent
from taskstream.settings import Settings
from taskstream.wiring import run_relay
from tests.support.relaying import consume, wait_for_checkpoint

pytestmark = pytest.mark.kafka


async def test_one_relay_publishes_and_the_other_takes_over(
    store: PostgresEventStore, database_url: str, tansu_bootstrap: str, unique: str
) -> None:
    settings = Settings(
        database_url=database_url, kafka_bootstrap_servers=tansu_bootstrap, kafka_topic_prefix=f"lead{unique}.",
        relay_checkpoint_name=f"relay-lead-{unique}", relay_leader_retry_seconds=0.1,
        metrics_port=0,  # two relays in one process: each its own /metrics port
    )  # fmt: skip
    checkpoints = Checkpoints(store.pool)
    await checkpoints.set(settings.relay_checkpoint_name, await store.head_position())
    await ensure_topics(tansu_bootstrap, [settings.topic_for(c) for c in CATEGORIES])  # a log that exists
    stops = [asyncio.Event(), asyncio.Event()]
    first = asyncio.create_task(run_relay(settings, stops[0]))
    await asyncio.sleep(0.5)
    second = asyncio.create_task(run_relay(settings, stops[1]))
    stream = f"task-{uuid.uuid4()}"
    try:
        before = await store.append(stream, ANY, [NewEvent("task.touched", {"n": i}) for i in range(5)])
        await wait_for_checkpoint(checkpoints, settings.relay_checkpoint_name, before.last_position or 0, timeout=20)
        stops[0].set()
        await asyncio.wait_for(first, 10)
        after = await store.append(stream, ANY, [NewEvent("task.touched", {"n": i}) for i in range(5, 10)])
        await wait_for_checkpoint(checkpoints, settings.relay_checkpoint_name, after.last_position or 0, timeout=20)
        assert not second.done()
    finally:
        for stop in stops:
            stop.set()
        await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True), 15)
    records = await consume(tansu_bootstrap, [f"{settings.kafka_topic_prefix}task"], want=10**9, timeout=3)
    ids = [json.loads(value)["id"] for _, _, value, _ in records]
    # Published once each, in order: two relays publishing at once would have doubled them.
    assert ids == [str(i) for i in (*before.event_ids, *after.event_ids)]
