"""The analysts' contract on Kafka, read by clients that share no code with taskstream.

A real workload goes through the command service into a database of this module's own; the
relay publishes it; then confluent-kafka (librdkafka, in a consumer group, as an analyst would)
reads the category topics, the CloudEvents SDK parses every record's headers (binary mode), and
``jsonschema`` validates every value against the envelope schema and the published schema of its
type and version. On tansu and on Apache Kafka.

tansu with confluent-kafka 2.16 (librdkafka 2.16): the defaults work (``api.version.request``
stays on; no ``broker.version.fallback``); a group join takes about half ``session.timeout.ms``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import pytest
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary_event
from confluent_kafka import Consumer

from commands.authz import Actor
from commands.handler import WriteContext
from commands.service import Service
from event_store.checkpoints import Checkpoints
from event_store.kafka import ensure_topics
from event_store.postgres import PostgresEventStore
from event_store.relay import RelayConfig
from schemas.catalog import public_data
from schemas.contract import dataschema, envelope_schema, published_data_schemas
from schemas.envelope import CATEGORIES, Metadata, NewEvent
from tests.support.relaying import run_relay

pytestmark = pytest.mark.kafka

PUBLIC = ("user", "project", "task")  # the analysts' topics (gateway/event_access.py)
SOURCE = "urn:taskstream:event-store"


@pytest.fixture(scope="module")
async def contract_store(isolated_database_url: str) -> AsyncIterator[PostgresEventStore]:
    store = await PostgresEventStore.connect(isolated_database_url, min_size=1, max_size=6)
    yield store
    await store.close()


async def workload(store: PostgresEventStore) -> None:
    """Every public event type a user can cause, through the real command service."""
    service = Service(store)
    ctx = WriteContext(Metadata(correlation_id=str(uuid.uuid4()), traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"))
    admin = Actor(str(uuid.uuid4()), "admin")

    async def register(role: str = "member") -> Actor:
        written = await service.register_user(admin if role != "member" else None, email=f"a{uuid.uuid4().hex[:10]}@example.org",
                                              display_name="Ann", password="password-123", role=role, ctx=ctx)  # fmt: skip
        return Actor(written.entity_id, role)

    owner, member, other = await register(), await register(), await register("analyst")
    await service.update_user(owner, uuid.UUID(owner.user_id), display_name="Ann B", ctx=ctx)
    await service.change_role(admin, uuid.UUID(other.user_id), role="member", ctx=ctx)
    await service.deactivate_user(admin, uuid.UUID(other.user_id), reason="left", ctx=ctx)
    for n in range(3):
        project = uuid.UUID((await service.create_project(owner, name=f"p-{uuid.uuid4().hex[:6]}", description="d", ctx=ctx)).entity_id)
        await service.put_member(owner, project, uuid.UUID(member.user_id), role="viewer", ctx=ctx)
        await service.put_member(owner, project, uuid.UUID(member.user_id), role="editor", ctx=ctx)
        tasks = [uuid.UUID((await service.submit_task(member, project, spec={"kind": "echo", "payload": {"n": i}}, ctx=ctx)).entity_id) for i in range(4)]
        await service.cancel_task(owner, tasks[0], reason="not needed", ctx=ctx)
        await service.update_project(owner, project, changes={"description": f"round {n}"}, ctx=ctx)
        await service.remove_member(owner, project, uuid.UUID(member.user_id), ctx=ctx)
        if n == 2:
            await service.archive_project(owner, project, ctx=ctx)
    # a record of an older schema version, as stored before project.updated v2: published as stored
    stream = f"project-{project}"
    version = (await store.read_stream(stream))[-1].version
    await store.append(stream, version, [NewEvent(type="project.updated", schema_version=1, data={"project_id": str(project), "name": None, "description": "v1"})], ctx.metadata)


async def publish(store: PostgresEventStore, bootstrap: str, prefix: str) -> None:
    config = RelayConfig(topic_prefix=prefix, checkpoint_name=f"relay-{prefix}", batch_size=50, poll_interval=0.2, source=SOURCE)
    await ensure_topics(bootstrap, [f"{prefix}{c}" for c in CATEGORIES])
    await run_relay(store, Checkpoints(store.pool), bootstrap, config, await store.head_position(), timeout=60)  # redacts with public_data


def consume(bootstrap: str, topics: list[str], want: int, timeout: float = 60) -> list[Any]:
    """An analyst's consumer: its own group, from the earliest offsets, until ``want`` records."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"analysts-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
    })  # fmt: skip
    consumer.subscribe(topics)
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < want and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error() is None, message.error()
            records.append(message)
    finally:
        consumer.close()
    return records


async def test_analysts_read_the_category_topics_with_independent_clients(contract_store: PostgresEventStore, kafka_bootstrap: str) -> None:
    store = contract_store
    prefix = f"contract{uuid.uuid4().hex[:6]}."
    start = await store.head_position()
    await workload(store)
    await publish(store, kafka_bootstrap, prefix)
    events = [e for e in await store.read_all(start, 10_000) if e.category in PUBLIC]
    records = await asyncio.to_thread(consume, kafka_bootstrap, [f"{prefix}{c}" for c in PUBLIC], len(events))

    schemas = published_data_schemas()
    envelope = jsonschema.Draft202012Validator(envelope_schema(), format_checker=jsonschema.FormatChecker())
    by_id = {str(e.id): e for e in events}
    seen: dict[str, Any] = {}
    streams: dict[str, list[tuple[int, int, int]]] = defaultdict(list)  # key -> (partition, offset, version)
    for record in records:
        cloudevent = from_binary_event(KafkaMessage(headers=dict(record.headers() or []), key=record.key(), value=record.value()))
        value = json.loads(record.value())
        envelope.validate(value)
        schema = schemas[(value["type"], value["schema_version"])]  # old versions by their own schema
        jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(value["data"])
        stored = by_id[cloudevent.get_id()]
        assert value == {**stored.to_json(), "data": public_data(stored.type, stored.data)}  # the table's JSON, less private fields
        assert "password_hash" not in value["data"]
        assert record.topic() == f"{prefix}{stored.category}" and record.key() == stored.stream.encode()
        assert cloudevent.get_specversion() == "1.0" and cloudevent.get_source() == SOURCE
        assert cloudevent.get_type() == stored.type and cloudevent.get_subject() == stored.stream
        assert cloudevent.get_time() == stored.recorded_at and cloudevent.get_datacontenttype() == "application/json"
        assert cloudevent.get_dataschema() == dataschema(stored.type, stored.schema_version) == schema["$id"]
        attributes = cloudevent.get_attributes()
        assert attributes["sequence"] == str(stored.global_position) and attributes["dataschemaversion"] == str(stored.schema_version)
        assert dict(record.headers() or [])["traceparent"] == b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
        seen.setdefault(cloudevent.get_id(), record)  # at least once: deduplicate by event id
        streams[stored.stream].append((record.partition(), record.offset(), stored.version))
    assert set(seen) == set(by_id), "every public event is on its topic"
    assert ("project.updated", 1) in {(e.type, e.schema_version) for e in events}, "an old version was validated by its own schema"
    assert {e.type for e in events} >= {"user.registered", "project.member_role_changed", "task.cancelled", "project.archived"}
    for stream, placed in streams.items():
        assert len({p for p, _, _ in placed}) == 1, f"{stream} spans partitions"
        versions = [v for _, _, v in sorted(placed)]
        assert versions == sorted(versions), f"{stream} out of order in its partition"
