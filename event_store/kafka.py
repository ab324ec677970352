"""aiokafka at the relay's edge: the log writer it publishes with, topic creation and checks.

``KafkaLog`` hands the relay one call per (topic, partition) batch: the records go out as one
producer batch (``create_batch``/``send_batch``), so they are acknowledged or refused together,
and the relay decides when the next batch of a partition may go. aiokafka's own per-record
``send`` is not used: its queued batches expire one by one, so an older batch of a partition can
fail while a newer one is acknowledged (see event_store/relay.py).

The producer never creates a topic by asking for it: aiokafka's metadata requests ask for
automatic creation by default, so after a broker lost its log (tansu restarted) a retried batch
would recreate the topic and land first in the new, empty log. Here the metadata requests refuse
creation, a send to a missing topic fails, and only the relay creates topics, after it closed
the producer that might still retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import ConnectionGroup
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from aiokafka.protocol.metadata import MetadataRequest

log = logging.getLogger("taskstream.kafka")

TOPIC_ALREADY_EXISTS = 36
UNKNOWN_TOPIC_OR_PARTITION = 3


@dataclass(frozen=True, slots=True)
class Record:
    key: bytes
    value: bytes
    timestamp_ms: int
    headers: list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class TopicSettings:
    """How the relay creates topics. Dev: 1 and 1. Production (3 brokers or more): replication
    factor 3 and min.insync.replicas 2, so that acks=all means two copies before an ack."""

    partitions: int = 4
    replication_factor: int = 1
    min_insync_replicas: int = 1

    def configs(self) -> dict[str, str]:
        return {"min.insync.replicas": str(self.min_insync_replicas)}


def partition_for(key: bytes, partitions: int) -> int:
    """The Java client's default partitioner (murmur2), as aiokafka's: every producer agrees."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class KafkaLog:
    """One producer's worth of publishing. Close it after any failure: ``close`` discards
    everything still queued or retrying, so nothing of this producer lands afterwards."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self._partitions: dict[str, int] = {}

    @classmethod
    async def connect(cls, bootstrap_servers: str, client_id: str = "taskstream-relay") -> KafkaLog:
        producer = make_producer(bootstrap_servers, client_id)
        try:
            await producer.start()
        except BaseException:
            await _close_hard(producer)
            raise
        return cls(producer)

    async def partitions(self, topic: str) -> int:
        if topic not in self._partitions:
            found = await self._producer.partitions_for(topic)
            if not found:
                raise KafkaError(f"topic {topic!r} has no partitions (missing?)")
            self._partitions[topic] = len(found)
        return self._partitions[topic]

    async def send(self, topic: str, partition: int, records: Sequence[Record]) -> int:
        """Send ``records`` to one partition and wait for the broker's ack; return the offset
        of the first. Records that do not fit one producer batch go as several, one at a time."""
        first: int | None = None
        pending = list(records)
        while pending:
            batch = self._producer.create_batch()
            taken = 0
            for record in pending:
                if batch.append(key=record.key, value=record.value, timestamp=record.timestamp_ms, headers=record.headers) is None:
                    break
                taken += 1
            if taken == 0:
                raise KafkaError(f"a record for {topic!r} is larger than a producer batch")
            batch.close()
            future = await self._producer.send_batch(batch, topic, partition=partition)
            metadata = await future
            first = metadata.offset if first is None else first
            pending = pending[taken:]
        assert first is not None
        return first

    async def close(self) -> None:
        await _close_hard(self._producer)


def make_producer(bootstrap_servers: str, client_id: str = "taskstream-relay") -> AIOKafkaProducer:
    """acks=all, no idempotence (tansu refuses aiokafka's InitProducerId), small linger; its
    metadata requests never create topics."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        client_id=client_id,
        acks="all",
        enable_idempotence=False,
        linger_ms=2,
        max_batch_size=262_144,
        request_timeout_ms=15_000,
        retry_backoff_ms=200,
    )
    _never_create_topics(producer.client)
    return producer


def _never_create_topics(client: AIOKafkaClient) -> None:
    """aiokafka (0.14) builds its metadata requests with automatic topic creation on and offers
    no option; this replaces the one method that builds them, per client, with the same steps
    and creation off."""

    async def metadata_update(self: AIOKafkaClient, cluster_metadata: Any, topics: Any) -> bool:
        request = MetadataRequest(list(topics) if topics else None, allow_auto_topic_creation=False)
        nodeids: list[Any] = [b.nodeId for b in self.cluster.brokers()]
        bootstrap_id = ("bootstrap", ConnectionGroup.DEFAULT)
        if bootstrap_id in self._conns:
            nodeids.append("bootstrap")
        random.shuffle(nodeids)
        for node_id in nodeids:
            conn = await self._get_conn(node_id)
            if conn is None:
                continue
            try:
                metadata = await conn.send(request)
            except (KafkaError, asyncio.TimeoutError) as err:
                log.warning("metadata request to node %s failed: %r", node_id, err)
                continue
            if not metadata.brokers:
                return False
            cluster_metadata.update_metadata(metadata)
            if bootstrap_id in self._conns and len(self.cluster.brokers()):
                self._conns.pop(bootstrap_id).close()
            return True
        cluster_metadata.failed_update(None)
        return False

    client._metadata_update = types.MethodType(metadata_update, client)  # type: ignore[method-assign]


async def _close_hard(producer: AIOKafkaProducer) -> None:
    """Stop without delivering what is still queued: fail it, then stop; if the producer does
    not stop in time (a batch retrying against a dead broker), stop its sender."""
    with contextlib.suppress(Exception):
        accumulator = producer._message_accumulator
        for batch in [b for batches in accumulator._batches.values() for b in batches] + list(accumulator._pending_batches):
            for future in (batch.future, batch._drain_waiter):  # nobody waits for these any more
                future.add_done_callback(_retrieve)
        accumulator.fail_all(KafkaError("the relay discarded this producer"))
    sender = getattr(producer, "_sender", None)
    try:
        await asyncio.wait_for(asyncio.shield(producer.stop()), 3)
    except (asyncio.TimeoutError, Exception) as exc:  # noqa: BLE001 - closing whatever happens
        log.warning("producer did not stop cleanly (%r); stopping its sender", exc)
        if sender is not None and sender.sender_task is not None:
            sender.sender_task.cancel()
        with contextlib.suppress(Exception):
            await producer.client.close()


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def missing_topics(bootstrap_servers: str, topics: Iterable[str]) -> set[str]:
    """The topics of ``topics`` the broker does not have (asking does not create them)."""
    wanted = sorted(set(topics))
    if not wanted:
        return set()
    client = AIOKafkaClient(bootstrap_servers=bootstrap_servers, client_id="taskstream-check")
    try:
        await client.bootstrap()
        node = client.get_random_node()
        response = await client.send(node, MetadataRequest(wanted, allow_auto_topic_creation=False))
    finally:
        await client.close()
    return {t[1] for t in response.topics if t[0] == UNKNOWN_TOPIC_OR_PARTITION}


async def ensure_topics(bootstrap_servers: str, topics: Iterable[str], settings: TopicSettings = TopicSettings()) -> set[str]:
    """Create the topics that do not exist yet, with explicit partitions, replication factor
    and min.insync.replicas; return the ones created now (the others existed already)."""
    wanted = sorted(set(topics))
    created: set[str] = set()
    if not wanted:
        return created
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="taskstream-admin")
    try:
        await admin.start()
        response = await admin.create_topics(
            [
                NewTopic(
                    name=t,
                    num_partitions=settings.partitions,
                    replication_factor=settings.replication_factor,
                    topic_configs=settings.configs(),
                )
                for t in wanted
            ]
        )
        for topic, code, *rest in getattr(response, "topic_errors", []):
            if code == 0:
                created.add(topic)
            elif code != TOPIC_ALREADY_EXISTS:
                raise RuntimeError(f"cannot create topic {topic!r}: error {code} {rest[0] if rest else ''}")
    finally:
        await admin.close()
    return created


class KafkaTopics:
    """The relay's view of topics on one cluster (event_store.relay.Topics)."""

    def __init__(self, bootstrap_servers: str, settings: TopicSettings = TopicSettings()) -> None:
        self._bootstrap = bootstrap_servers
        self._settings = settings

    async def ensure(self, topics: Iterable[str]) -> set[str]:
        return await ensure_topics(self._bootstrap, topics, self._settings)

    async def missing(self, topics: Iterable[str]) -> set[str]:
        return await missing_topics(self._bootstrap, topics)

    async def end_offsets(self, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        return await end_offsets(self._bootstrap, partitions)


async def end_offsets(bootstrap_servers: str, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """The end offset of each partition (ListOffsets latest; on tansu the offset of the newest
    batch + 1, which is enough to see a log that went back)."""
    wanted = [TopicPartition(topic, partition) for topic, partition in partitions]
    if not wanted:
        return {}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, client_id="taskstream-check", enable_auto_commit=False)
    _never_create_topics(consumer._client)
    try:
        await consumer.start()  # inside: a start that fails (broker down) or is cancelled still stops it
        found = await consumer.end_offsets(wanted)
    finally:
        await consumer.stop()
    return {(tp.topic, tp.partition): int(offset) for tp, offset in found.items()}
