"""Running a relay in a test and reading what it published: shared by the relay, contract,
leadership, restart and tracing tests (real PostgreSQL and a real Kafka-protocol broker)."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, TopicPartition

from event_store.checkpoints import Checkpoints
from event_store.kafka import KafkaLog, KafkaTopics, partition_for
from event_store.postgres import PostgresEventStore
from event_store.relay import Relay, RelayConfig
from schemas.catalog import public_data


async def wait_for_checkpoint(checkpoints: Checkpoints, name: str, position: int, timeout: float = 30, poll: float = 0.05) -> None:
    """Until the checkpoint ``name`` reaches ``position`` (TimeoutError after ``timeout`` s)."""
    async with asyncio.timeout(timeout):
        while await checkpoints.get(name) < position:
            await asyncio.sleep(poll)


def kafka_relay(store: PostgresEventStore, checkpoints: Checkpoints, bootstrap: str, config: RelayConfig, **kwargs: object) -> Relay:
    return Relay(
        store, checkpoints, lambda: KafkaLog.connect(bootstrap), config,
        partitioner=partition_for, topics=KafkaTopics(bootstrap), **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip


async def run_relay(
    store: PostgresEventStore, checkpoints: Checkpoints, bootstrap: str, config: RelayConfig, until: int, timeout: float = 30
) -> int:
    """Run a relay until its checkpoint reaches ``until``; return where it started."""
    stop = asyncio.Event()
    relay = kafka_relay(store, checkpoints, bootstrap, config, redact=public_data)
    started_at = await checkpoints.get(config.checkpoint_name)
    task = asyncio.create_task(relay.run(stop))
    try:
        await wait_for_checkpoint(checkpoints, config.checkpoint_name, until, timeout)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    return started_at


async def consume(bootstrap: str, topics: list[str], want: int, timeout: float = 30) -> list[tuple[str, bytes, bytes, dict[str, bytes]]]:
    """Read every partition of ``topics`` from the beginning until ``want`` records arrived."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ()) or [0, 1, 2, 3]]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records: list[tuple[str, bytes, bytes, dict[str, bytes]]] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while len(records) < want and asyncio.get_running_loop().time() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for tp, messages in batches.items():
                records.extend((tp.topic, m.key, m.value, dict(m.headers)) for m in messages)
        return records
    finally:
        await consumer.stop()
