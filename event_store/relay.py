"""The relay: tails the events table and publishes every event to the Kafka-compatible log.

Topic per category (``events.task``), key = stream id, value = the event's JSON (the same form
as the table, less the fields an event type marks private, such as a password hash),
CloudEvents binary-mode headers plus the trace context. At least once: the
checkpoint moves only after the broker acknowledged the whole batch (acks=all), so a crash or
a broker failure re-publishes from the checkpoint, and consumers deduplicate by event id.

The producer is not idempotent on purpose: aiokafka's idempotent producer does not work against
tansu (see INFRA.md). Per-stream order holds because one stream maps to one partition and
aiokafka keeps at most one batch in flight per partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from opentelemetry.trace import Span, SpanKind, StatusCode

from event_store.checkpoints import Checkpoints
from event_store.postgres import PostgresEventStore
from schemas.envelope import CATEGORIES, RecordedEvent
from taskstream.telemetry import context_from, is_sampled, kafka_trace_headers, tracer

log = logging.getLogger("taskstream.relay")
_tracer = tracer("taskstream.relay")

CE_SPECVERSION = b"1.0"


class Producer(Protocol):
    async def send(self, topic: str, value: bytes | None = ..., key: bytes | None = ..., partition: int | None = ...,
                   timestamp_ms: int | None = ..., headers: list[tuple[str, bytes]] | None = ...) -> asyncio.Future[Any]: ...  # fmt: skip


@dataclass(frozen=True, slots=True)
class RelayConfig:
    topic_prefix: str = "events."
    checkpoint_name: str = "relay"
    batch_size: int = 500
    source: str = "urn:taskstream:event-store"
    poll_interval: float = 1.0
    retry_backoff: float = 0.5


def topic_for(prefix: str, category: str) -> str:
    return f"{prefix}{category}"


def encode_value(event: RecordedEvent) -> bytes:
    return json.dumps(event.to_json(), separators=(",", ":")).encode()


Redactor = Callable[[str, dict[str, Any]], dict[str, Any]]  # (type, data) -> data fit to publish


def redacted(event: RecordedEvent, redact: Redactor | None) -> RecordedEvent:
    if redact is None:
        return event
    data = redact(event.type, event.data)
    return event if data is event.data else replace(event, data=data)


def cloudevent_headers(event: RecordedEvent, source: str, trace: list[tuple[str, bytes]] | None = None) -> list[tuple[str, bytes]]:
    """CloudEvents 1.0 Kafka binding, binary mode: attributes as ``ce_`` headers; plus the
    trace context: ``trace`` (the publish span's) or else the one stored with the event."""
    headers = [
        ("ce_specversion", CE_SPECVERSION),
        ("ce_id", str(event.id).encode()),
        ("ce_type", event.type.encode()),
        ("ce_source", source.encode()),
        ("ce_subject", event.stream.encode()),
        ("ce_time", event.recorded_at.isoformat().encode()),
        ("ce_dataschemaversion", str(event.schema_version).encode()),
        ("ce_sequence", str(event.global_position).encode()),
        ("content-type", b"application/json"),
    ]
    if trace:
        headers.extend(trace)
        return headers
    for key in ("traceparent", "tracestate"):
        value = event.metadata.get(key)
        if value:
            headers.append((key, str(value).encode()))
    return headers


LagObserver = Callable[[Sequence[RecordedEvent], float], None]


class Relay:
    def __init__(
        self,
        store: PostgresEventStore,
        checkpoints: Checkpoints,
        producer: Producer,
        config: RelayConfig = RelayConfig(),
        *,
        ensure_topics: Callable[[Iterable[str]], Awaitable[set[str] | None]] | None = None,
        observe: LagObserver | None = None,
        redact: Redactor | None = None,
    ) -> None:
        self._store = store
        self._checkpoints = checkpoints
        self._producer = producer
        self._config = config
        self._ensure_topics = ensure_topics
        self._observe = observe
        self._redact = redact
        self._known_topics: set[str] = set()
        self.position = 0

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Publish until ``stop`` is set. Failures are retried from the stored checkpoint."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            worker = asyncio.create_task(self._publish_from_checkpoint())
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({worker, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for task in (worker, stopper):
                if task not in done:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if worker in done and (exc := worker.exception()) is not None:
                log.warning("relay failed at position %d, retrying from the checkpoint: %r", self.position, exc)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._config.retry_backoff)

    async def _publish_from_checkpoint(self) -> None:
        log_topics = {topic_for(self._config.topic_prefix, c) for c in CATEGORIES}
        created = await self._topics(log_topics)
        self.position = await self._checkpoints.get(self._config.checkpoint_name)
        if self.position > 0 and created >= log_topics:
            # Every topic of the log had to be created: the log the checkpoint refers to is gone
            # (tansu keeps it in memory; a broker may be rebuilt). The table is the truth: publish
            # it all again, and consumers deduplicate by event id.
            log.warning("relay: the log was lost (its topics were missing); republishing from the start")
            await self._checkpoints.reset(self._config.checkpoint_name, 0)
            self.position = 0
        log.info("relay publishing from position %d", self.position)
        subscription = self._store.subscribe(self.position, self._config.batch_size, poll_interval=self._config.poll_interval)
        async with contextlib.aclosing(subscription):
            async for batch in subscription:
                await self.publish(batch)
                await self._checkpoints.set(self._config.checkpoint_name, batch[-1].global_position)
                self.position = batch[-1].global_position

    async def publish(self, batch: Sequence[RecordedEvent]) -> None:
        """Send a batch and wait until the broker acknowledged every record. An event whose
        ``traceparent`` is sampled gets a ``publish`` span in its trace, from send to ack, and
        the record's trace headers name that span (consumers continue from it)."""
        topics = {topic_for(self._config.topic_prefix, e.category) for e in batch}
        await self._topics(topics - self._known_topics)
        spans: list[Span] = []
        try:
            acks = []
            for event in batch:
                topic = topic_for(self._config.topic_prefix, event.category)
                span = self._publish_span(event, topic)
                if span is not None:
                    spans.append(span)
                acks.append(
                    await self._producer.send(
                        topic,
                        value=encode_value(redacted(event, self._redact)),
                        key=event.stream.encode(),
                        timestamp_ms=int(event.recorded_at.timestamp() * 1000),
                        headers=cloudevent_headers(event, self._config.source, kafka_trace_headers(span) if span else None),
                    )
                )
            await asyncio.gather(*acks)
        except BaseException as exc:
            for span in spans:
                span.record_exception(exc)
                span.set_status(StatusCode.ERROR, type(exc).__name__)
            raise
        finally:
            for span in spans:
                span.end()
        if self._observe is not None:
            self._observe(batch, time.time())

    def _publish_span(self, event: RecordedEvent, topic: str) -> Span | None:
        """The publish span of a sampled trace; None for an unsampled one (its context is
        forwarded as stored: a span nobody records costs more than the send it describes)."""
        traceparent = event.metadata.get("traceparent")
        if not is_sampled(traceparent):
            return None
        parent = context_from(traceparent, event.metadata.get("tracestate"))
        if parent is None:
            return None
        return _tracer.start_span(
            f"publish {topic}",
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "send",
                "messaging.destination.name": topic,
                "messaging.message.id": str(event.id),
                "taskstream.global_position": event.global_position,
            },
        )

    async def _topics(self, topics: Iterable[str]) -> set[str]:
        """Make sure the topics exist; return those that had to be created."""
        missing = [t for t in topics if t not in self._known_topics]
        created: set[str] = set()
        if missing and self._ensure_topics is not None:
            created = set(await self._ensure_topics(missing) or ())
        self._known_topics.update(missing)
        return created
