"""A real broker (tansu, memory storage) restarted under the running relay, under write load:
the relay notices the lost log, republishes the table, and the new log holds every event with
each stream in version order after dropping duplicates."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from event_store.checkpoints import Checkpoints
from event_store.postgres import PostgresEventStore
from event_store.relay import RelayConfig
from schemas.envelope import ANY, NewEvent
from taskstream import embedded
from tests.support.relaying import consume, kafka_relay, wait_for_checkpoint
from tests.integration.test_relay_failures import by_stream_deduplicated

pytestmark = pytest.mark.kafka


async def test_a_broker_restart_under_load_loses_nothing_and_keeps_stream_order(
    store: PostgresEventStore, server_dir: Path, unique: str
) -> None:
    port = embedded.free_port()
    broker = embedded.start_tansu(server_dir / f"tansu-restart-{unique}", port)
    try:
        config = RelayConfig(topic_prefix=f"r{unique}.", checkpoint_name=f"relay-restart-{unique}", batch_size=50,
                             poll_interval=0.2, retry_backoff=0.2, log_check_interval=0.3)  # fmt: skip
        checkpoints = Checkpoints(store.pool)
        await checkpoints.set(config.checkpoint_name, await store.head_position())
        relay = kafka_relay(store, checkpoints, broker.url, config)
        streams = [f"task-{uuid.uuid4()}" for _ in range(8)]
        versions = dict.fromkeys(streams, 0)
        stop_writing = asyncio.Event()

        async def write() -> None:
            while not stop_writing.is_set():
                for stream in streams:
                    await store.append(stream, ANY, [NewEvent("task.touched", {})])
                    versions[stream] += 1
                await asyncio.sleep(0.01)

        stop = asyncio.Event()
        relaying = asyncio.create_task(relay.run(stop))
        writing = asyncio.create_task(write())
        try:
            await asyncio.sleep(1.5)
            broker.stop()  # tansu keeps its log in memory: a restart loses it
            await asyncio.sleep(0.3)
            broker = embedded.start_tansu(server_dir / f"tansu-restart-{unique}", port)
            await asyncio.sleep(1.5)
            stop_writing.set()
            await writing
            await wait_for_checkpoint(checkpoints, config.checkpoint_name, await store.head_position(), timeout=60)
        finally:
            stop_writing.set()
            stop.set()
            await asyncio.wait_for(relaying, 20)
        assert relay.logs_lost >= 1
        total = sum(versions.values())
        records = await consume(broker.url, [f"{config.topic_prefix}task"], want=10**9, timeout=5)
        published = by_stream_deduplicated(value for _, _, value, _ in records)
        for stream in streams:
            assert published[stream] == list(range(1, versions[stream] + 1)), stream
        assert total > 100
    finally:
        broker.stop()
