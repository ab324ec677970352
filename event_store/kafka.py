"""aiokafka at the relay's edge: the producer it publishes with, and topic creation."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

log = logging.getLogger("taskstream.kafka")

TOPIC_ALREADY_EXISTS = 36


def make_producer(bootstrap_servers: str, client_id: str = "taskstream-relay") -> AIOKafkaProducer:
    """acks=all, no idempotence (tansu refuses aiokafka's InitProducerId), small linger."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        client_id=client_id,
        acks="all",
        enable_idempotence=False,
        linger_ms=2,
        max_batch_size=262_144,
        request_timeout_ms=15_000,
        retry_backoff_ms=200,
    )


async def ensure_topics(bootstrap_servers: str, topics: Iterable[str], partitions: int = 4, replication: int = 1) -> set[str]:
    """Create the topics that do not exist yet, with an explicit partition count; return the
    ones created now (the others existed already)."""
    wanted = sorted(set(topics))
    created: set[str] = set()
    if not wanted:
        return created
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="taskstream-admin")
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(name=t, num_partitions=partitions, replication_factor=replication) for t in wanted]
        )
        for topic, code, *rest in getattr(response, "topic_errors", []):
            if code == 0:
                created.add(topic)
            elif code != TOPIC_ALREADY_EXISTS:
                raise RuntimeError(f"cannot create topic {topic!r}: error {code} {rest[0] if rest else ''}")
    finally:
        await admin.close()
    return created
