"""One trace from the gateway's request through the command and the append to the relay's
publish, carried by the event's metadata and then by the Kafka record's headers, to the
projector's apply of that record (the agent's own step, fed the record as consumed) and, for a
task, to the worker's run: the worker's log consumer (a real consumer group on the broker)
keeps the record's trace context with the task's row, its run span continues it, and the
worker's own StartTask/SucceedTask appends join the same trace."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from opentelemetry.trace import SpanKind

from event_store.checkpoints import Checkpoints
from event_store.kafka import ensure_topics
from event_store.postgres import PostgresEventStore
from event_store.relay import RelayConfig
from projections.catalog import MODELS
from projections.queries import get_row
from commands.service import Service
from projections.runtime import Projector
from projections.stream import project_batch
from schemas.catalog import registry
from schemas.envelope import CATEGORIES
from taskstream.settings import Settings
from taskstream.wiring import build_relay
from tests.e2e.conftest import User
from tests.support.relaying import wait_for_checkpoint
from tests.support.tracing import Recorded, recorded_spans
from workers.consumer import TaskLogConsumer
from workers.kinds import Services, load_registry
from workers.leases import Leases
from workers.runner import Worker, WorkerConfig

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def ids(traceparent: str) -> tuple[int, int]:
    """(trace id, parent span id) of a W3C traceparent ``00-<trace>-<span>-<flags>``."""
    version, trace_id, span_id, flags = traceparent.split("-")
    assert version == "00" and int(flags, 16) & 1  # sampled
    return int(trace_id, 16), int(span_id, 16)


@pytest.fixture
def spans() -> Iterator[Recorded]:
    with recorded_spans() as recorded:
        yield recorded


async def relay_until(store: PostgresEventStore, bootstrap: str, config: RelayConfig, position: int) -> None:
    checkpoints = Checkpoints(store.pool)
    stop = asyncio.Event()
    settings = Settings(database_url="unused", kafka_bootstrap_servers=bootstrap, kafka_topic_prefix=config.topic_prefix,
                        relay_checkpoint_name=config.checkpoint_name)  # fmt: skip
    relay = build_relay(settings, store)
    task = asyncio.create_task(relay.run(stop))
    try:
        await wait_for_checkpoint(checkpoints, config.checkpoint_name, position)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def headers_of(bootstrap: str, topic: str, key: bytes) -> dict[str, bytes]:
    return {k: v for k, v in (await record_of(bootstrap, topic, key)).headers}


async def record_of(bootstrap: str, topic: str, key: bytes):  # noqa: ANN201 - an aiokafka ConsumerRecord
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or {0, 1, 2, 3})]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        async with asyncio.timeout(30):
            while True:
                for messages in (await consumer.getmany(timeout_ms=200)).values():
                    for message in messages:
                        if message.key == key:
                            return message
    finally:
        await consumer.stop()


@pytest.mark.parametrize("caller_sends_traceparent", [True, False], ids=["continues-caller", "new-trace"])
async def test_one_trace_from_request_to_publish(
    client: httpx.AsyncClient, store: PostgresEventStore, tansu_bootstrap: str, spans: Recorded, caller_sends_traceparent: bool
) -> None:
    unique = uuid.uuid4().hex[:12]
    config = RelayConfig(topic_prefix=f"trace{unique}.", checkpoint_name=f"relay-{unique}", poll_interval=0.2)
    await Checkpoints(store.pool).set(config.checkpoint_name, await store.head_position())
    await ensure_topics(tansu_bootstrap, [f"{config.topic_prefix}{c}" for c in CATEGORIES])
    headers = {"traceparent": f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"} if caller_sends_traceparent else {}

    response = await client.post(
        "/v1/users", json={"email": f"t{unique}@example.org", "display_name": "Tracy", "password": "correct horse battery"}, headers=headers
    )
    assert response.status_code == 201, response.text
    stream, position = response.json()["stream"], response.json()["global_position"]

    (request,) = [s for s in spans.named("POST /v1/users") if s.kind is SpanKind.SERVER]
    trace_id = request.context.trace_id
    if caller_sends_traceparent:
        assert format(trace_id, "032x") == CALLER_TRACE and request.parent is not None
        assert request.parent.span_id == 0x00F067AA0BA902B7
    else:
        assert request.parent is None  # the gateway began the trace
    assert dict(request.attributes or {})["http.route"] == "/v1/users"
    (command,) = spans.named("command")
    (append,) = spans.named("append")
    assert command.parent is not None and command.parent.span_id == request.context.span_id
    assert append.parent is not None and append.parent.span_id == command.context.span_id
    assert {s.context.trace_id for s in (command, append)} == {trace_id}

    # The stored event carries the append span's context ...
    (event,) = await store.read_stream(stream)
    assert ids(event.metadata["traceparent"]) == (trace_id, append.context.span_id)

    # ... the relay's publish span continues it, and the record names the publish span.
    await relay_until(store, tansu_bootstrap, config, position)
    publishes = [s for s in spans.named(f"publish {config.topic_prefix}user") if s.context.trace_id == trace_id]
    assert len(publishes) == 1
    (publish,) = publishes
    assert publish.kind is SpanKind.PRODUCER
    assert publish.parent is not None and publish.parent.span_id == append.context.span_id
    record = await headers_of(tansu_bootstrap, f"{config.topic_prefix}user", stream.encode())
    assert ids(record["traceparent"].decode()) == (trace_id, publish.context.span_id)
    # The projector's step over that record continues from the publish span.
    message = await record_of(tansu_bootstrap, f"{config.topic_prefix}user", stream.encode())
    users = Projector(MODELS["users"], store.pool, store.read_streams, registry(), consumer="trace-test")
    await project_batch(users, [message])
    (applied,) = [s for s in spans.named("project users") if s.context.trace_id == trace_id]
    assert applied.kind is SpanKind.CONSUMER
    assert applied.parent is not None and applied.parent.span_id == publish.context.span_id
    assert await get_row(store.pool, "users", stream.partition("-")[2]) is not None
    # Every span of this write is in the one trace.
    assert {s.name for s in spans.spans(trace_id)} >= {"POST /v1/users", "command", "append", f"publish {config.topic_prefix}user", "project users"}


async def test_an_unsampled_trace_is_forwarded_without_spans(
    client: httpx.AsyncClient, store: PostgresEventStore, tansu_bootstrap: str, spans: Recorded
) -> None:
    """A caller that samples nothing: no span is recorded anywhere, and the context still
    travels (the relay forwards the stored one), so logs keep correlating by trace id."""
    unique = uuid.uuid4().hex[:12]
    config = RelayConfig(topic_prefix=f"trace{unique}.", checkpoint_name=f"relay-{unique}", poll_interval=0.2)
    await Checkpoints(store.pool).set(config.checkpoint_name, await store.head_position())
    await ensure_topics(tansu_bootstrap, [f"{config.topic_prefix}{c}" for c in CATEGORIES])
    unsampled = f"00-{uuid.uuid4().hex}-00f067aa0ba902b7-00"
    response = await client.post(
        "/v1/users", json={"email": f"u{unique}@example.org", "display_name": "U", "password": "correct horse battery"},
        headers={"traceparent": unsampled},
    )  # fmt: skip
    assert response.status_code == 201, response.text
    stream, position = response.json()["stream"], response.json()["global_position"]
    (event,) = await store.read_stream(stream)
    stored = event.metadata["traceparent"]
    assert stored.split("-")[1] == unsampled.split("-")[1] and stored.endswith("-00")
    await relay_until(store, tansu_bootstrap, config, position)
    record = await headers_of(tansu_bootstrap, f"{config.topic_prefix}user", stream.encode())
    assert record["traceparent"].decode() == stored
    assert spans.spans(int(unsampled.split("-")[1], 16)) == []


async def test_one_trace_from_task_submission_to_the_workers_run(
    client: httpx.AsyncClient, store: PostgresEventStore, tansu_bootstrap: str, spans: Recorded, new_user, new_project  # noqa: ANN001
) -> None:
    owner: User = await new_user()
    project = await new_project(owner)
    unique = uuid.uuid4().hex[:12]
    config = RelayConfig(topic_prefix=f"trace{unique}.", checkpoint_name=f"relay-{unique}", poll_interval=0.2)
    await Checkpoints(store.pool).set(config.checkpoint_name, await store.head_position())
    await ensure_topics(tansu_bootstrap, [f"{config.topic_prefix}{c}" for c in CATEGORIES])
    topic = f"{config.topic_prefix}task"

    response = await client.post(f"/v1/projects/{project}/tasks", json={"kind": "echo", "payload": {"traced": True}}, headers=owner.auth)
    assert response.status_code == 202, response.text
    task_id = response.json()["id"]
    stream = f"task-{task_id}"
    (submitted,) = await store.read_stream(stream)
    (request,) = [s for s in spans.named("POST /v1/projects/{project_id}/tasks") if s.context.trace_id == int(submitted.metadata["traceparent"].split("-")[1], 16)]
    trace_id = request.context.trace_id

    # gateway -> relay: the publish span continues the append's context
    await relay_until(store, tansu_bootstrap, config, submitted.global_position)
    (publish,) = [s for s in spans.named(f"publish {topic}") if s.context.trace_id == trace_id]
    message = await record_of(tansu_bootstrap, topic, stream.encode())
    assert ids(dict(message.headers)["traceparent"].decode()) == (trace_id, publish.context.span_id)
    # -> projector
    tasks = Projector(MODELS["tasks"], store.pool, store.read_streams, registry(), consumer="trace-test")
    await project_batch(tasks, [message])
    (applied,) = [s for s in spans.named("project tasks") if s.context.trace_id == trace_id]
    assert applied.parent is not None and applied.parent.span_id == publish.context.span_id

    # -> worker: its real log consumer in a consumer group of its own reads the record
    worker = Worker(Service(store), Leases(store.pool, f"tracer-{unique}", 30), load_registry(), Services(store, None, None),
                    WorkerConfig(worker_id=f"tracer-{unique}", concurrency=2, lease_seconds=30))  # fmt: skip
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=tansu_bootstrap, group_id=f"trace-workers-{unique}", enable_auto_commit=False,
                                auto_offset_reset="earliest", session_timeout_ms=2000, heartbeat_interval_ms=500, fetch_max_wait_ms=10)  # fmt: skip
    await consumer.start()
    stop = asyncio.Event()
    consuming = asyncio.create_task(TaskLogConsumer(consumer, worker, worker.leases, store.pool).run(stop))
    try:
        async with asyncio.timeout(60):
            while [e.type for e in await store.read_stream(stream)][-1:] != ["task.succeeded"]:
                await asyncio.sleep(0.05)
            while worker.busy:
                await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(consuming, 10)
        # the consumer committed exactly what it handled (in the background, after the batch)
        assert await consumer.committed(TopicPartition(topic, message.partition)) == message.offset + 1
    finally:
        stop.set()
        await asyncio.wait_for(consuming, 10)
        await consumer.stop()
    async with store.pool.connection() as conn:  # what a later claim of the row would hand the runner
        kept = await (await conn.execute("SELECT traceparent FROM worker_tasks WHERE task_id = %s", (uuid.UUID(task_id),))).fetchone()
    assert kept is not None and ids(kept[0]) == (trace_id, publish.context.span_id)

    (work,) = [s for s in spans.named("work task") if s.context.trace_id == trace_id]
    assert work.kind is SpanKind.CONSUMER and work.parent is not None and work.parent.span_id == publish.context.span_id
    assert dict(work.attributes or {})["taskstream.task_id"] == task_id
    (run,) = [s for s in spans.named("run task") if s.context.trace_id == trace_id]
    assert run.parent is not None and run.parent.span_id == work.context.span_id
    assert dict(run.attributes or {})["taskstream.task.kind"] == "echo"
    # the worker's own commands (StartTask, SucceedTask) are in the trace, under its span ...
    commands = [s for s in spans.named("command") if s.context.trace_id == trace_id and s.parent is not None and s.parent.span_id == work.context.span_id]
    assert len(commands) == 2
    appends = {s.context.span_id for s in spans.named("append") if s.context.trace_id == trace_id}
    # ... and so are their events, which carry it on to the relay and the projector
    events = await store.read_stream(stream)
    assert [e.type for e in events] == ["task.submitted", "task.started", "task.succeeded"]
    for event in events[1:]:
        event_trace, parent_span = ids(event.metadata["traceparent"])
        assert event_trace == trace_id and parent_span in appends
    assert {s.name for s in spans.spans(trace_id)} >= {
        "POST /v1/projects/{project_id}/tasks", "command", "append", f"publish {topic}", "project tasks", "work task", "run task",
    }
