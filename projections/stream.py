"""The faust-streaming app that feeds the projectors from the category topics.

One agent per read model consumes ``<prefix><category>`` through the consumer group, so several
``taskstream project`` processes share the partitions. Records come in batches
(``noack_take``); a batch is acknowledged to faust only after ``Projector.apply_batch`` has
committed it, so faust never commits an offset past an event whose rows are not committed. No
faust Tables: the read models live in PostgreSQL, tracked there with the rows.

tansu (see INFRA.md) reports wrong end offsets, so nothing here relies on them; lag is measured
from PostgreSQL (``projections.lag``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import faust
from faust.transport.drivers import aiokafka as aiokafka_driver

from opentelemetry.trace import SpanKind

from projections.runtime import Projector, Record
from schemas.envelope import RecordedEvent
from taskstream.telemetry import context_from, is_sampled, traceparent_from_headers, tracer

log = logging.getLogger("taskstream.projections")


@dataclass(frozen=True, slots=True)
class StreamConfig:
    bootstrap_servers: str
    group_id: str = "taskstream-projector"
    topic_prefix: str = "events."
    batch_size: int = 2000
    batch_within: float = 0.01  # seconds to wait for a batch to fill
    session_timeout: float = 10.0
    heartbeat_interval: float = 1.5
    data_dir: str | None = None  # faust's datadir (unused by the memory store, but always created)


def decode(message: Any) -> Record | Exception:
    """A log record (faust's or aiokafka's) as a Record, or why it is not an event."""
    try:
        event = RecordedEvent.from_json(json.loads(message.value))
    except Exception as exc:  # noqa: BLE001 - the caller parks it, never drops it
        return exc
    return Record(event, message.topic, message.partition, message.offset)


def _headers(message: Any) -> list[tuple[str, Any]]:
    headers = getattr(message, "headers", None) or ()
    return list(headers.items()) if isinstance(headers, Mapping) else list(headers)


async def project_batch(projector: Projector, messages: list[Any]) -> None:
    """One step of an agent: decode, park what is not an event, apply, then record an apply span
    in the trace of every sampled record (the relay's publish span is the parent, from the
    record's ``traceparent`` header), so one trace runs from the request to the read model."""
    records = []
    for message in messages:
        decoded = decode(message)
        if isinstance(decoded, Record) and projector.model.owns(decoded.event.stream):
            records.append(decoded)
        else:
            await projector.park_undecodable(message.topic, message.partition, message.offset, message.key, decoded)
    started_ns = time.time_ns()
    started = time.perf_counter()
    await projector.apply_batch(records)
    log.debug("%s: %d records in %.1f ms", projector.model.name, len(records), (time.perf_counter() - started) * 1000)
    ended_ns = time.time_ns()
    name = f"project {projector.model.name}"
    for message in messages:
        traceparent, tracestate = traceparent_from_headers(_headers(message))
        if is_sampled(traceparent):
            span = tracer("taskstream.projections").start_span(
                name, context=context_from(traceparent, tracestate), kind=SpanKind.CONSUMER, start_time=started_ns,
                attributes={"messaging.destination.name": message.topic, "messaging.kafka.offset": message.offset,
                            "taskstream.batch_size": len(messages)},
            )  # fmt: skip
            span.end(end_time=ended_ns)


class _PromptConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    """faust fixes the consumer's ``fetch_max_wait_ms`` at 1500. tansu answers a fetch only when
    that wait is over, even when records arrive meanwhile (measured: 450 ms per record at 1500 ms,
    2 ms at 5 ms), so every event would wait there before it could be projected."""

    fetch_max_wait_ms = 5

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms  # read by consumer.start()
        return consumer


class _Consumer(aiokafka_driver.Consumer):
    def _new_consumer_thread(self) -> aiokafka_driver.AIOKafkaConsumerThread:
        return _PromptConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(aiokafka_driver.Transport):
    Consumer = _Consumer


class _App(faust.App):
    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)


def build_app(config: StreamConfig, projectors: Mapping[str, Projector]) -> faust.App:
    """The app, with one agent per projector. Start it with ``await app.start()``."""
    app = _App(
        config.group_id,
        broker=[f"kafka://{server.strip()}" for server in config.bootstrap_servers.split(",")],
        store="memory://",
        web_enabled=False,
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=config.session_timeout,
        broker_heartbeat_interval=config.heartbeat_interval,
        broker_rebalance_timeout=config.session_timeout,
        key_serializer="raw",
        value_serializer="raw",
        **({"datadir": config.data_dir} if config.data_dir else {}),
    )
    for projector in projectors.values():
        _add_agent(app, config, projector)
    return app


def _add_agent(app: faust.App, config: StreamConfig, projector: Projector) -> None:
    topic = app.topic(f"{config.topic_prefix}{projector.model.category}", key_type=bytes, value_type=bytes)

    async def project(stream: Any) -> None:
        async for events in stream.noack_take(config.batch_size, within=config.batch_within):
            await project_batch(projector, [event.message for event in events])
            for event in events:
                await stream.ack(event)

    project.__name__ = f"project_{projector.model.name}"
    project.__qualname__ = project.__name__
    app.agent(topic, name=f"taskstream.project.{projector.model.name}")(project)


def topics(config: StreamConfig, projectors: Iterable[Projector]) -> list[str]:
    return [f"{config.topic_prefix}{p.model.category}" for p in projectors]
