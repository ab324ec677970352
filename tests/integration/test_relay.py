"""The relay over a real PostgreSQL and a real broker: tansu and Apache Kafka."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from event_store.checkpoints import Checkpoints
from event_store.kafka import KafkaLog, ensure_topics
from event_store.postgres import PostgresEventStore
from event_store.relay import RelayConfig
from schemas.catalog import public_data
from schemas.envelope import ANY, CATEGORIES, NewEvent
from tests.support.relaying import consume, kafka_relay, run_relay, wait_for_checkpoint

pytestmark = pytest.mark.kafka



@pytest.fixture
async def relay_env(store: PostgresEventStore, kafka_bootstrap: str, unique: str) -> AsyncIterator[tuple[RelayConfig, Checkpoints]]:
    config = RelayConfig(topic_prefix=f"t{unique}.", checkpoint_name=f"relay-{unique}", batch_size=50, poll_interval=0.5)
    checkpoints = Checkpoints(store.pool)
    # Start after everything other tests wrote: this relay publishes only this test's events.
    await checkpoints.set(config.checkpoint_name, await store.head_position())
    await ensure_topics(kafka_bootstrap, [f"{config.topic_prefix}{c}" for c in CATEGORIES])
    yield config, checkpoints


async def test_under_a_steady_stream_of_writes_a_batch_starts_at_most_once_per_interval(
    store: PostgresEventStore, kafka_bootstrap: str, relay_env: tuple[RelayConfig, Checkpoints]
) -> None:
    """A write every ~2 ms for 1.5 s: with ``batch_interval`` 0.1 s the relay starts at most one
    batch per 0.1 s (each takes what arrived meanwhile), and publishes every event once."""
    config, checkpoints = relay_env
    config = replace(config, batch_interval=0.1, batch_size=500)
    published: list[int] = []
    relay = kafka_relay(store, checkpoints, kafka_bootstrap, config, redact=public_data,
                        observe=lambda batch, _at: published.append(len(batch)))  # fmt: skip
    stop = asyncio.Event()
    began = time.monotonic()
    task = asyncio.create_task(relay.run(stop))
    stream, written = f"task-{uuid.uuid4()}", 0
    try:
        while time.monotonic() - began < 1.5:
            await store.append(stream, ANY, [NewEvent("task.touched", {"n": written})])
            written += 1
            await asyncio.sleep(0.002)
        await wait_for_checkpoint(checkpoints, config.checkpoint_name, await store.head_position())
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    elapsed = time.monotonic() - began
    assert sum(published) == written
    assert len(published) <= elapsed / config.batch_interval + 1
    assert max(published) > 1
    records = await consume(kafka_bootstrap, [f"{config.topic_prefix}task"], want=written)
    assert [json.loads(value)["data"]["n"] for _, _, value, _ in records] == list(range(written))


async def test_a_backlog_goes_in_full_batches_without_waiting_out_the_interval(
    store: PostgresEventStore, kafka_bootstrap: str, relay_env: tuple[RelayConfig, Checkpoints]
) -> None:
    """2,000 events in the table before the relay starts, 50 a batch, a 1 s interval: full batches
    follow each other at once, so the 40 batches take far less than the 40 s the interval would."""
    config, checkpoints = relay_env
    config = replace(config, batch_interval=1.0)
    streams = [f"task-{uuid.uuid4()}" for _ in range(20)]
    for round_ in range(100):
        await asyncio.gather(*(store.append(s, ANY, [NewEvent("task.touched", {"round": round_})]) for s in streams))
    await run_relay(store, checkpoints, kafka_bootstrap, config, await store.head_position(), timeout=30)
    records = await consume(kafka_bootstrap, [f"{config.topic_prefix}task"], want=2000)
    assert len({json.loads(value)["id"] for _, _, value, _ in records}) == 2000


async def test_every_event_is_published_keyed_by_stream_in_stream_order(
    store: PostgresEventStore, kafka_bootstrap: str, relay_env: tuple[RelayConfig, Checkpoints]
) -> None:
    config, checkpoints = relay_env
    streams = [f"{c}-{uuid.uuid4()}" for c in CATEGORIES for _ in range(3)]
    appended: dict[str, list[str]] = defaultdict(list)
    for round_ in range(4):
        results = await asyncio.gather(
            *(store.append(s, ANY, [NewEvent(f"{s.split('-')[0]}.touched", {"round": round_})]) for s in streams)
        )
        for s, r in zip(streams, results, strict=True):
            appended[s].extend(str(i) for i in r.event_ids)
    head = await store.head_position()
    await run_relay(store, checkpoints, kafka_bootstrap, config, head)

    records = await consume(kafka_bootstrap, [f"{config.topic_prefix}{c}" for c in CATEGORIES], want=len(streams) * 4)
    by_stream: dict[str, list[str]] = defaultdict(list)
    for topic, key, value, headers in records:
        body = json.loads(value)
        assert key.decode() == body["stream"]
        assert topic == f"{config.topic_prefix}{body['stream'].split('-')[0]}"
        assert headers["ce_id"].decode() == body["id"] and headers["ce_type"].decode() == body["type"]
        assert headers["ce_specversion"] == b"1.0" and headers["ce_subject"].decode() == body["stream"]
        assert headers["ce_source"] and headers["ce_time"]
        by_stream[body["stream"]].append(body["id"])
    for stream in streams:  # nothing lost, per-stream order kept (duplicates would show here too)
        assert by_stream[stream] == appended[stream]


async def test_checkpoint_survives_a_restart_of_the_relay(
    store: PostgresEventStore, kafka_bootstrap: str, relay_env: tuple[RelayConfig, Checkpoints]
) -> None:
    config, checkpoints = relay_env
    stream = f"task-{uuid.uuid4()}"
    first = await store.append(stream, ANY, [NewEvent("task.touched", {"i": i}) for i in range(3)])
    assert first.last_position is not None
    await run_relay(store, checkpoints, kafka_bootstrap, config, first.last_position)

    second = await store.append(stream, ANY, [NewEvent("task.touched", {"i": i}) for i in range(3, 6)])
    assert second.last_position is not None
    started_at = await run_relay(store, checkpoints, kafka_bootstrap, config, second.last_position)
    assert started_at == first.last_position  # the second relay resumed from the stored checkpoint

    records = await consume(kafka_bootstrap, [f"{config.topic_prefix}task"], want=6)
    ids = [json.loads(v)["id"] for _, _, v, _ in records]
    assert ids == [str(i) for i in (*first.event_ids, *second.event_ids)]


async def test_trace_context_travels_in_headers(
    store: PostgresEventStore, kafka_bootstrap: str, relay_env: tuple[RelayConfig, Checkpoints]
) -> None:
    from schemas.envelope import Metadata

    config, checkpoints = relay_env
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    result = await store.append(f"user-{uuid.uuid4()}", ANY, [NewEvent("user.touched", {})], Metadata(traceparent=traceparent))
    assert result.last_position is not None
    await run_relay(store, checkpoints, kafka_bootstrap, config, result.last_position)
    records = await consume(kafka_bootstrap, [f"{config.topic_prefix}user"], want=1)
    # The same trace; the span is the relay's publish span when tracing records (else the stored one).
    sent = records[0][3]["traceparent"].decode().split("-")
    assert sent[0] == "00" and sent[1] == traceparent.split("-")[1] and len(sent[2]) == 16


async def test_a_password_hash_stays_in_the_store(
    store: PostgresEventStore, kafka_bootstrap: str, relay_env: tuple[RelayConfig, Checkpoints]
) -> None:
    config, checkpoints = relay_env
    data = {"user_id": str(uuid.uuid4()), "email": "a@example.org", "display_name": "A", "password_hash": "$argon2id$v=19$x", "role": "member"}
    result = await store.append(f"user-{data['user_id']}", ANY, [NewEvent("user.registered", data)])
    assert result.last_position is not None
    await run_relay(store, checkpoints, kafka_bootstrap, config, result.last_position)
    records = await consume(kafka_bootstrap, [f"{config.topic_prefix}user"], want=1)
    published = json.loads(records[0][2])
    assert published["type"] == "user.registered" and published["data"]["email"] == "a@example.org"
    assert "password_hash" not in published["data"]
    assert (await store.read_stream(f"user-{data['user_id']}"))[0].data["password_hash"] == data["password_hash"]


async def test_a_lost_log_is_republished_from_the_table(
    store: PostgresEventStore, kafka_bootstrap: str, unique: str
) -> None:
    """tansu keeps the log in memory: after a restart every topic is missing although the
    checkpoint has moved on. The relay sees it had to create the whole log and starts over."""
    stream = f"task-{uuid.uuid4()}"
    old = await store.append(stream, ANY, [NewEvent("task.touched", {"before": True})])
    checkpoints = Checkpoints(store.pool)
    config = RelayConfig(topic_prefix=f"lost{unique}.", checkpoint_name=f"relay-lost-{unique}", batch_size=1000, poll_interval=0.5)
    await checkpoints.set(config.checkpoint_name, await store.head_position())  # "published" to a log now gone
    published: set[str] = set()
    relay = kafka_relay(
        store, checkpoints, kafka_bootstrap, config, observe=lambda batch, _at: published.update(str(e.id) for e in batch)
    )
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        async with asyncio.timeout(60):
            while str(old.event_ids[0]) not in published:
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    records = await consume(kafka_bootstrap, [f"{config.topic_prefix}task"], want=10**9, timeout=3)
    assert str(old.event_ids[0]) in {json.loads(value)["id"] for _, _, value, _ in records}


async def test_an_existing_log_is_not_republished(
    store: PostgresEventStore, kafka_bootstrap: str, relay_env: tuple[RelayConfig, Checkpoints]
) -> None:
    config, checkpoints = relay_env  # topics exist already (created by the fixture)
    before = await store.append(f"task-{uuid.uuid4()}", ANY, [NewEvent("task.touched", {})])
    await checkpoints.set(config.checkpoint_name, await store.head_position())
    after = await store.append(f"task-{uuid.uuid4()}", ANY, [NewEvent("task.touched", {})])
    assert after.last_position is not None
    await run_relay(store, checkpoints, kafka_bootstrap, config, after.last_position)
    # Read the whole topic (not just the first record): a republished `before` would show.
    records = await consume(kafka_bootstrap, [f"{config.topic_prefix}task"], want=10**9, timeout=3)
    ids = [json.loads(v)["id"] for _, _, v, _ in records]
    assert ids == [str(after.event_ids[0])]


async def test_topics_are_created_with_the_configured_replication_settings(kafka_bootstrap: str, unique: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    from event_store.kafka import TopicSettings
    from taskstream.settings import Settings
    from taskstream.wiring import topic_settings

    settings = Settings.from_env({"DATABASE_URL": "unused", "KAFKA_PARTITIONS": "3", "KAFKA_MIN_INSYNC_REPLICAS": "2"})
    assert topic_settings(settings) == TopicSettings(partitions=3, replication_factor=1, min_insync_replicas=2)
    topic = f"conf{unique}.task"
    assert await ensure_topics(kafka_bootstrap, [topic], topic_settings(settings)) == {topic}
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, None)])
        entries = {entry[0]: entry[1] for entry in described.resources[0][4]}
        assert entries["min.insync.replicas"] == "2"
        (metadata,) = (await admin.describe_topics([topic]))
        assert len(metadata["partitions"]) == 3
    finally:
        await admin.close()


async def test_end_offsets_cover_what_was_acknowledged(kafka_bootstrap: str, unique: str) -> None:
    """What the relay's lost-log check relies on, on each broker: a partition's reported end is
    past the offset of the last batch acknowledged there (tansu reports the newest batch's
    offset + 1, not the true end, which is still enough)."""
    from event_store.kafka import Record, end_offsets

    topic = f"ends{unique}.task"
    await ensure_topics(kafka_bootstrap, [topic])
    log = await KafkaLog.connect(kafka_bootstrap)
    try:
        bases = [await log.send(topic, 1, [Record(b"k", b"v%d" % i, 0, []) for i in range(n)]) for n in (3, 2)]
    finally:
        await log.close()
    assert bases[1] >= bases[0] + 3
    ends = await end_offsets(kafka_bootstrap, [(topic, 1), (topic, 2)])
    assert ends[(topic, 1)] > bases[1] and ends[(topic, 2)] == 0


async def test_the_relays_producer_never_creates_a_topic(kafka_bootstrap: str, unique: str) -> None:
    """Both brokers create topics on request; the relay's producer must not ask, or a batch
    retried across a broker restart would recreate the topic and land first in the new log."""
    from event_store.kafka import missing_topics

    topic = f"never{unique}.task"
    log = await KafkaLog.connect(kafka_bootstrap)
    try:
        with pytest.raises(Exception):  # noqa: B017 - whichever error aiokafka raises for it
            await asyncio.wait_for(log.partitions(topic), 5)
    finally:
        await log.close()
    assert await missing_topics(kafka_bootstrap, [topic]) == {topic}
