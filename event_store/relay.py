"""The relay: tails the events table and publishes every event to the Kafka-compatible log.

Topic per category (``events.task``), key = stream id, value = the event's JSON (the same form
as the table, less the fields an event type marks private, such as a password hash),
CloudEvents binary-mode headers plus the trace context. At least once: the checkpoint moves
only after the broker acknowledged the whole batch (acks=all), so a crash or a broker failure
re-publishes from the checkpoint, and consumers deduplicate by event id.

Per-stream order, also when the broker fails
--------------------------------------------
A stream maps to one partition. After dropping duplicates (by event id) every consumer must
see a stream's events in version order; that holds if, in every partition, what one attempt of
the relay wrote is a *prefix* of what it meant to write, and every attempt starts over from the
checkpoint (at or before the first event not yet acknowledged). So:

- a partition's records go as one batch at a time: the next batch of a partition is sent only
  after the previous one was acknowledged (other partitions go in parallel). aiokafka's queued
  batches expire one by one, so with two batches of a partition queued, the older one could
  fail while the newer one is acknowledged; that can no longer happen;
- on any failure, the attempt stops sending everywhere, closes its producer (which discards
  what is queued or retrying, see event_store/kafka.py) and a new attempt with a new producer
  republishes from the checkpoint. A batch that failed but landed anyway is the first missing
  piece of its partition, which the next attempt writes again: still a prefix.

The broker losing its log
-------------------------
tansu keeps its log in memory; a broker may be rebuilt. The log is lost when a topic the relay
published to is missing (checked when an attempt starts and every ``log_check_interval``
seconds while it runs), when a partition it wrote to now ends before the last batch it had
acknowledged there (the topic was recreated empty; checked with the same interval), or when the
broker acknowledges a batch at an offset below one it acknowledged before. Then the relay closes its producer, resets the checkpoint to 0 and
republishes the whole table into new topics. The producer never creates topics by itself, so a
batch retried across the broker's restart cannot land first in the new log.

Batches under load
------------------
Under a steady stream of writes the relay starts a batch at most every ``batch_interval``
seconds (default 20 ms): after a publish it waits out the rest of the interval, so the next
batch takes what arrived meanwhile. An event after a quiet spell is read and sent at once, and
a full batch (``batch_size``: a backlog, as after a restart) is followed at once by the next. This
bounds the batches the broker stores per second (a batch per partition per publish), which
matters on tansu: its cost per produce and fetch grows with the batches a partition holds.
Measured with one aiokafka producer at 800 records/s and one consumer, from the record's
creation to the consumer: with a batch every ~2 ms the delay grew from 5 ms to 50-850 ms within
a minute and tansu took 90 % of a core; with one every 20 ms it stayed at 15-18 ms, tansu at
28 %. ``bench/lag.py``'s p99 went from 87-258 ms (median 125, 15 runs) to 62-115 ms (median 67,
10 runs).

Only one relay publishes at a time: see event_store/leadership.py.
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
from event_store.kafka import Record
from event_store.postgres import PostgresEventStore
from schemas.contract import dataschema
from schemas.envelope import CATEGORIES, RecordedEvent
from taskstream.telemetry import context_from, is_sampled, kafka_trace_headers, tracer

log = logging.getLogger("taskstream.relay")
_tracer = tracer("taskstream.relay")

CE_SPECVERSION = b"1.0"


class LogWriter(Protocol):
    """One producer's worth of publishing (event_store.kafka.KafkaLog)."""

    async def partitions(self, topic: str) -> int: ...

    async def send(self, topic: str, partition: int, records: Sequence[Record]) -> int:
        """Wait for the broker's ack of ``records`` (in order, one partition); return the first
        one's offset. Raises on any failure."""
        ...

    async def close(self) -> None:
        """Discard whatever is still queued: nothing of this writer lands afterwards."""
        ...


class Topics(Protocol):
    async def ensure(self, topics: Iterable[str]) -> set[str]:
        """Create the missing ones; return those created now."""
        ...

    async def missing(self, topics: Iterable[str]) -> set[str]:
        """Those the broker does not have (without creating them)."""
        ...

    async def end_offsets(self, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Each partition's end offset as the broker reports it (at least the offset of its
        newest batch + 1, even on tansu)."""
        ...


class LogLost(Exception):
    """The broker no longer holds what the relay published to it."""


@dataclass(frozen=True, slots=True)
class RelayConfig:
    topic_prefix: str = "events."
    checkpoint_name: str = "relay"
    batch_size: int = 500
    source: str = "urn:taskstream:event-store"
    poll_interval: float = 1.0
    retry_backoff: float = 0.5
    log_check_interval: float = 2.0
    batch_interval: float = 0.02  # the least time between the starts of two batches (see "Batches under load")


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
        ("ce_dataschema", dataschema(event.type, event.schema_version).encode()),
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


def to_record(event: RecordedEvent, source: str, redact: Redactor | None, trace: list[tuple[str, bytes]] | None = None) -> Record:
    return Record(
        key=event.stream.encode(),
        value=encode_value(redacted(event, redact)),
        timestamp_ms=int(event.recorded_at.timestamp() * 1000),
        headers=cloudevent_headers(event, source, trace),
    )


LagObserver = Callable[[Sequence[RecordedEvent], float], None]
Partitioner = Callable[[bytes, int], int]


class Relay:
    def __init__(
        self,
        store: PostgresEventStore,
        checkpoints: Checkpoints,
        connect: Callable[[], Awaitable[LogWriter]],
        config: RelayConfig = RelayConfig(),
        *,
        partitioner: Partitioner,
        topics: Topics | None = None,
        observe: LagObserver | None = None,
        redact: Redactor | None = None,
        fence: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._checkpoints = checkpoints
        self._connect = connect
        self._config = config
        self._partitioner = partitioner
        self._topics = topics
        self._observe = observe
        self._redact = redact
        self._fence = fence  # raises unless this relay is still the only one (leadership)
        self._known_topics: set[str] = set()
        self._published_topics: set[str] = set()
        self._log_ends: dict[tuple[str, int], int] = {}  # (topic, partition) -> next offset expected at least
        self._log_bases: dict[tuple[str, int], int] = {}  # (topic, partition) -> offset of the last batch acked
        self.position = 0
        self.attempts = 0
        self.logs_lost = 0

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Publish until ``stop`` is set. Failures are retried from the stored checkpoint."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            worker = asyncio.create_task(self._attempt())
            stopper = asyncio.create_task(stop.wait())
            try:
                done, _ = await asyncio.wait({worker, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:  # also when run() itself is cancelled: the attempt closes its producer
                for task in (worker, stopper):
                    if not task.done():
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
            if worker in done and (exc := worker.exception()) is not None:
                if isinstance(exc, LogLost):
                    await self._restart_log(str(exc))
                    continue
                log.warning("relay failed at position %d, retrying from the checkpoint: %r", self.position, exc)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._config.retry_backoff)

    async def _restart_log(self, why: str) -> None:
        log.warning("relay: the log was lost (%s); republishing from the start", why)
        self.logs_lost += 1
        await self._checkpoints.reset(self._config.checkpoint_name, 0)
        self.position = 0
        self._known_topics.clear()
        self._published_topics.clear()
        self._log_ends.clear()
        self._log_bases.clear()

    async def _attempt(self) -> None:
        """One producer, from the checkpoint, until anything fails."""
        self.attempts += 1
        writer = await self._connect()
        tasks: set[asyncio.Task[None]] = set()
        checkpointer: _Checkpointer | None = None
        try:
            log_topics = {topic_for(self._config.topic_prefix, c) for c in CATEGORIES}
            created = await self._ensure(log_topics)
            self.position = await self._checkpoints.get(self._config.checkpoint_name)
            if self.position > 0 and (created >= log_topics or created & self._published_topics):
                # The topics the checkpoint refers to had to be created: that log is gone. The
                # table is the truth: publish it all again, consumers deduplicate by event id.
                raise LogLost("its topics were missing")
            log.info("relay publishing from position %d", self.position)
            checkpointer = _Checkpointer(self._checkpoints, self._config.checkpoint_name, self._saved)
            tasks.add(asyncio.create_task(self._publish_from(writer, self.position, checkpointer)))
            tasks.add(asyncio.create_task(checkpointer.run()))
            if self._topics is not None and self._config.log_check_interval > 0:
                tasks.add(asyncio.create_task(self._watch_log()))
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raises what stopped it
        finally:
            try:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                if checkpointer is not None:
                    # What was acknowledged is kept (else republished, which is allowed but wasteful).
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(2.0):
                            await checkpointer.flush()
            finally:  # a second cancel during the gather or the flush still closes the producer
                await writer.close()

    def _saved(self, position: int) -> None:
        self.position = max(self.position, position)

    async def _publish_from(self, writer: LogWriter, position: int, checkpointer: _Checkpointer) -> None:
        subscription = self._store.subscribe(position, self._config.batch_size, poll_interval=self._config.poll_interval)
        async with contextlib.aclosing(subscription):
            clock = asyncio.get_running_loop().time
            async for batch in subscription:
                started = clock()
                await self.publish(writer, batch)
                checkpointer.acked(batch[-1].global_position)
                rest = self._config.batch_interval - (clock() - started)
                if rest > 0 and len(batch) < self._config.batch_size:  # a full batch: a backlog, no wait
                    await asyncio.sleep(rest)  # the next batch takes what arrives meanwhile

    async def _watch_log(self) -> None:
        assert self._topics is not None
        while True:
            await asyncio.sleep(self._config.log_check_interval)
            if self._published_topics and (gone := await self._topics.missing(set(self._published_topics))):
                raise LogLost(f"topics {sorted(gone)} are missing")
            bases = dict(self._log_bases)  # taken before asking: later acks only move them up
            if bases:
                ends = await self._topics.end_offsets(bases)
                for (topic, partition), base in bases.items():
                    end = ends.get((topic, partition))
                    if end is not None and end <= base:
                        raise LogLost(f"{topic}[{partition}] ends at offset {end}, but offset {base} was acknowledged")

    async def publish(self, writer: LogWriter, batch: Sequence[RecordedEvent]) -> None:
        """Send a batch and wait until the broker acknowledged every record: per partition one
        producer batch at a time, partitions in parallel; the first failure stops them all."""
        config = self._config
        groups: dict[tuple[str, int], list[Record]] = {}
        await self._ensure({topic_for(config.topic_prefix, e.category) for e in batch} - self._known_topics)
        counts: dict[str, int] = {}
        spans: list[Span] = []  # one publish span per event of a sampled trace, from send to ack
        for event in batch:
            topic = topic_for(config.topic_prefix, event.category)
            if topic not in counts:
                counts[topic] = await writer.partitions(topic)
            span = self._publish_span(event, topic)
            if span is not None:
                spans.append(span)
            record = to_record(event, config.source, self._redact, kafka_trace_headers(span) if span else None)
            groups.setdefault((topic, self._partitioner(record.key, counts[topic])), []).append(record)
        self._published_topics.update(counts)
        try:
            if self._fence is not None:
                await self._fence()
            sends = [asyncio.create_task(self._send(writer, topic, p, records)) for (topic, p), records in groups.items()]
            try:
                await asyncio.gather(*sends)
            except BaseException:
                for send in sends:
                    send.cancel()
                await asyncio.gather(*sends, return_exceptions=True)
                raise
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

    async def _send(self, writer: LogWriter, topic: str, partition: int, records: list[Record]) -> None:
        first = await writer.send(topic, partition, records)
        expected = self._log_ends.get((topic, partition))
        if expected is not None and first < expected:
            raise LogLost(f"{topic}[{partition}] acknowledged offset {first}, below {expected} acknowledged before")
        self._log_ends[(topic, partition)] = first + len(records)
        self._log_bases[(topic, partition)] = first

    async def _ensure(self, topics: Iterable[str]) -> set[str]:
        """Make sure the topics exist; return those that had to be created."""
        missing = [t for t in topics if t not in self._known_topics]
        created: set[str] = set()
        if missing and self._topics is not None:
            created = set(await self._topics.ensure(missing))
        self._known_topics.update(missing)
        return created


class _Checkpointer:
    """Stores the newest acknowledged position in the background, so the next batch is read and
    sent while the checkpoint commits (a commit's WAL flush used to stand between two batches).
    The guarantee is unchanged: a position is handed over only once its batch was acknowledged,
    and ``Checkpoints.set`` only moves forward, so overlapping or late writes cannot move the
    checkpoint back. A write that fails ends the attempt (``run`` raises), as before."""

    def __init__(self, checkpoints: Checkpoints, name: str, saved: Callable[[int], None]) -> None:
        self._checkpoints, self._name, self._on_saved = checkpoints, name, saved
        self._acked: int | None = None
        self._stored: int | None = None
        self._wake = asyncio.Event()

    def acked(self, position: int) -> None:
        self._acked = position
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        target = self._acked
        if target is None or target == self._stored:
            return
        await self._checkpoints.set(self._name, target)
        self._stored = target
        self._on_saved(target)
