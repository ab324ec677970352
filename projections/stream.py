"""The faust-streaming app that feeds the projectors from the category topics.

One agent per read model consumes ``<prefix><category>`` through the consumer group, so several
``taskstream project`` processes share the partitions. Records are applied in batches by group
commit (``_Batches``): no wait for a batch to fill, so a lone event is applied at once, and under
load a batch is whatever arrived while the previous one was applied, up to ``batch_size``. A
batch is acknowledged to faust only after its rows are committed and the cache refreshed, so
faust never commits an offset past an event whose rows are not committed. No faust Tables: the
read models live in PostgreSQL, tracked there with the rows.

tansu (see INFRA.md) reports wrong end offsets, so nothing here relies on them; lag is measured
from PostgreSQL (``projections.lag``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import faust

from opentelemetry.trace import SpanKind

from projections import faust_consumer
from projections.model import ReadModel
from projections.runtime import Outcome, Projector, Record
from schemas.envelope import RecordedEvent, json_loads
from taskstream.telemetry import context_from, is_sampled, traceparent_from_headers, tracer

log = logging.getLogger("taskstream.projections")


@dataclass(frozen=True, slots=True)
class StreamConfig:
    bootstrap_servers: str
    group_id: str = "taskstream-projector"
    topic_prefix: str = "events."
    batch_size: int = 2000  # the most records one transaction applies
    session_timeout: float = 10.0
    heartbeat_interval: float = 1.5
    data_dir: str | None = None  # faust's datadir (unused by the memory store, but always created)


def decode(message: Any) -> Record | Exception:
    """A log record (faust's or aiokafka's) as a Record, or why it is not an event."""
    try:
        event = RecordedEvent.from_json(json_loads(message.value))
    except Exception as exc:  # noqa: BLE001 - the caller parks it, never drops it
        return exc
    return Record(event, message.topic, message.partition, message.offset)


def _headers(message: Any) -> list[tuple[str, Any]]:
    headers = getattr(message, "headers", None) or ()
    return list(headers.items()) if isinstance(headers, Mapping) else list(headers)


async def project_batch(projector: Projector, messages: list[Any]) -> None:
    """One step of an agent: decode, park what is not an event, apply (rows, then cache), then
    record an apply span in the trace of every sampled record (the relay's publish span is the
    parent, from the record's ``traceparent`` header), so one trace runs from the request to the
    read model."""
    outcome = await commit_batch(projector, [(message, prepare(projector.model, message)) for message in messages])
    await projector.write_through(outcome)


def prepare(model: ReadModel, message: Any) -> tuple[bool, Any]:
    """(True, the Record with its row id) for an event of a stream ``model`` owns; else
    (False, what to park it with: the decoded Record or the decoding error)."""
    decoded = decode(message)
    key = model.key_of(decoded.event.stream) if isinstance(decoded, Record) else None
    if key is None:
        return False, decoded
    return True, Record(decoded.event, decoded.topic, decoded.partition, decoded.offset, key)


async def commit_batch(projector: Projector, taken: Sequence[tuple[Any, tuple[bool, Any]]]) -> Outcome:
    """``project_batch`` up to the commit, for the messages paired with what ``prepare`` made of
    them: the caller refreshes the cache with the outcome (``projector.write_through``) before it
    acknowledges the messages."""
    records = []
    for message, (ready, value) in taken:
        if ready:
            records.append(value)
        else:
            await projector.park_undecodable(message.topic, message.partition, message.offset, message.key, value)
    started_ns = time.time_ns()
    started = time.perf_counter()
    outcome = await projector.commit_batch(records)
    log.debug("%s: %d records in %.1f ms", projector.model.name, len(records), (time.perf_counter() - started) * 1000)
    ended_ns = time.time_ns()
    name = f"project {projector.model.name}"
    for message, _ in taken:
        headers = message.headers
        if not headers or (isinstance(headers, (list, tuple)) and not any(key == "traceparent" for key, _ in headers)):
            continue  # no trace context: no span (the common case, cheaply)
        traceparent, tracestate = traceparent_from_headers(_headers(message))
        if is_sampled(traceparent):
            span = tracer("taskstream.projections").start_span(
                name, context=context_from(traceparent, tracestate), kind=SpanKind.CONSUMER, start_time=started_ns,
                attributes={"messaging.destination.name": message.topic, "messaging.kafka.offset": message.offset,
                            "taskstream.batch_size": len(taken)},
            )  # fmt: skip
            span.end(end_time=ended_ns)
    return outcome


def build_app(config: StreamConfig, projectors: Mapping[str, Projector]) -> faust.App:
    """The app, with one agent per projector. Start it with ``await app.start()``."""
    app = faust_consumer.App(
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
    name = f"{config.topic_prefix}{projector.model.category}"
    topic = app.topic(name, key_type=bytes, value_type=bytes)

    async def project(stream: Any) -> None:
        # The agent subscribes the topic (consumer-group membership, rebalances); its records
        # are handed to the batches by the consumer (``FeedingConsumer.feeds``, a fetch at a
        # time), never to ``stream``.
        consumer = app.consumer
        batches = _Batches(projector, consumer, config.batch_size)
        consumer.feeds[name] = batches
        try:
            await batches.wait()
        finally:
            if consumer.feeds.get(name) is batches:
                del consumer.feeds[name]
            await batches.close()

    project.__name__ = f"project_{projector.model.name}"
    project.__qualname__ = project.__name__
    app.agent(topic, name=f"taskstream.project.{projector.model.name}")(project)


_BEHIND = 1000  # records the log is ahead of a batch when the projector is catching up
_LINGER = 0.02  # seconds a catching-up projector waits for its next batch to fill


class _Batches:
    """Group commit of a topic's records. The consumer only buffers (``put_many``); one task applies
    whatever the buffer holds (up to ``size``) as one batch, while the consumer keeps buffering
    the next: a lone record is applied at once, and under load each batch is what arrived during
    the previous one. The cache refresh of a committed batch runs while the next batch is
    applied; a batch is acknowledged once both are done, batches in order. A full buffer makes
    the consumer wait."""

    def __init__(self, projector: Projector, consumer: Any, size: int) -> None:
        self._projector, self._consumer, self._size = projector, consumer, max(1, size)
        self._app = consumer.app
        self._buffer: list[tuple[Any, tuple[bool, Any]]] = []  # (record, the record through ``prepare``)
        self._model = projector.model
        self._pending = asyncio.Event()
        self._full = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._worker = asyncio.create_task(self._run(), name=f"project-{projector.model.name}")

    async def put_many(self, messages: Sequence[Any]) -> None:
        """Buffer one partition's fetched records (at least one, of one generation, in offset
        order)."""
        if len(self._buffer) >= 2 * self._size and not self._worker.done():
            self._room.clear()
            room = asyncio.ensure_future(self._room.wait())
            try:
                await asyncio.wait({room, self._worker}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                room.cancel()
        app = self._app
        # Generations only grow: if the first record is of the current one, so are the others.
        if self._worker.done() or not app.flow_control.is_active() or messages[0].generation_id != app.consumer_generation_id:
            return  # not buffered, not tracked: read again from the committed offset
        track, model = self._consumer.track_message, self._model
        buffer = self._buffer
        for message in messages:
            if not message.tracked:
                message.tracked = True
                track(message)
            # Decoded now, on arrival: while the batch before is in PostgreSQL (this loop is idle
            # then), not after it, in the batch's own time.
            buffer.append((message, prepare(model, message)))
        self._pending.set()
        if len(buffer) >= self._size:
            self._full.set()

    async def wait(self) -> None:
        """Until the batch task ends: raises its error."""
        await asyncio.shield(self._worker)

    async def _run(self) -> None:
        refreshing: asyncio.Task[None] | None = None
        behind = 0  # how far the log was ahead of the previous batch
        try:
            while True:
                await self._pending.wait()
                if len(self._buffer) < self._size and behind >= _BEHIND:
                    # Catching up: a moment to let more arrive, so that the fixed cost of a
                    # transaction (round trips, commit) spreads over more events.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(_LINGER):
                            await self._full.wait()
                taken, self._buffer = self._buffer[: self._size], self._buffer[self._size :]
                batch = [message for message, _ in taken]
                behind = self._behind(batch)
                if len(self._buffer) < self._size:
                    self._full.clear()
                if not self._buffer:
                    self._pending.clear()
                if len(self._buffer) < 2 * self._size:
                    self._room.set()
                outcome = await commit_batch(self._projector, taken)
                if refreshing is not None:
                    await refreshing
                refreshing = asyncio.create_task(_refresh_then_ack(self._projector, outcome, self._consumer, batch))
        finally:
            if refreshing is not None and not refreshing.done():
                await asyncio.shield(refreshing)

    def _behind(self, batch: list[Any]) -> int:
        """Records of the log past the batch (fetch high-water marks: right even on tansu)."""
        last: dict[Any, int] = {}
        for message in batch:
            last[message.tp] = max(last.get(message.tp, -1), message.offset)
        try:
            consumer = self._consumer
            return max((consumer.highwater(tp) or 0) - offset - 1 for tp, offset in last.items())
        except Exception:  # noqa: BLE001 - unknown: assume the projector keeps up
            return 0

    async def close(self) -> None:
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker


async def _refresh_then_ack(projector: Projector, outcome: Outcome, consumer: Any, messages: list[Any]) -> None:
    await projector.write_through(outcome)
    for message in messages:
        consumer.ack(message)


def topics(config: StreamConfig, projectors: Iterable[Projector]) -> list[str]:
    return [f"{config.topic_prefix}{p.model.category}" for p in projectors]
