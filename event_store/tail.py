"""Live tails for many readers: one shared tailer per process, fanned out to bounded queues.

What a subscription guarantees
------------------------------
- **No gap.** The shared tailer reads with ``PostgresEventStore.subscribe``, which never passes
  a position that a transaction still in flight could fill (positions are handed out in commit
  order, see event_store/postgres.py). A subscription that starts behind the tailer first
  catches up from the table, reading only up to the tailer's position (every lower position is
  final once the tailer has seen it), and joins the fan-out in the same step of the event loop
  in which it found itself caught up: nothing falls between the two.
- **No duplicate.** A subscription hands over strictly increasing positions, all above the one
  it started after; whatever the fan-out offers at or below its position is skipped.
- **Bounded memory.** A live subscriber's queue holds at most ``queue_size`` events. A
  subscriber that lets it fill (a slow client) is dropped: its queue is freed at once and
  ``next`` raises ``Dropped``; it may resume from the last position it took, like anyone.
- **One reader.** However many subscribers, the process runs one LISTEN connection and one
  query per notification (started with the first subscription), not one per subscriber; each
  event is prepared (encoded) once for all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from event_store.postgres import PostgresEventStore
from schemas.envelope import RecordedEvent

log = logging.getLogger("taskstream.tail")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a reader wants: some categories and/or some types (None: any)."""

    categories: frozenset[str] | None = None
    types: frozenset[str] | None = None

    def matches(self, event: RecordedEvent) -> bool:
        return (self.categories is None or event.category in self.categories) and (self.types is None or event.type in self.types)


async def read_matching(
    store: PostgresEventStore, after: int, through: int | None, where: EventFilter, limit: int
) -> list[RecordedEvent]:
    """Events matching ``where`` with ``after < global_position <= through`` (no upper bound if
    ``through`` is None), in global order, at most ``limit``. Reading up to a position already
    seen by a gap-free reader (or the head read before) sees every event there will ever be."""
    conditions, params = ["global_position > %s"], [after]
    if through is not None:
        conditions.append("global_position <= %s")
        params.append(through)
    if where.categories is not None:
        conditions.append("category = ANY(%s)")
        params.append(sorted(where.categories))
    if where.types is not None:
        conditions.append("type = ANY(%s)")
        params.append(sorted(where.types))
    return await store.read_where(conditions, params, limit=limit)


class Closed(Exception):
    """The subscription ended; ``reason`` says why, for the reader."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Dropped(Closed):
    """The subscriber fell too far behind the live tail (its queue filled)."""


class HubClosed(Closed):
    """The process is shutting down."""


class Subscription(Generic[T]):
    """One reader's view: ``next`` hands over (event, prepared) pairs after ``position``."""

    def __init__(self, hub: EventHub[T], after: int, where: EventFilter) -> None:
        self._hub = hub
        self.where = where
        self.position = after  # everything matching up to here has been handed over
        self._queue: deque[tuple[RecordedEvent, T]] = deque()
        self._wake = asyncio.Event()
        self._live = False
        self._closed: Closed | None = None
        self.peak = 0  # the most events its queue ever held (bounded by the hub's queue_size)

    @property
    def live(self) -> bool:
        return self._live

    async def next(self, timeout: float) -> list[tuple[RecordedEvent, T]]:
        """The next events (at most a queue's worth), or [] when ``timeout`` passed without any.
        Raises ``Dropped`` or ``HubClosed`` once the subscription is over."""
        hub = self._hub
        while not self._live:
            self._raise_if_closed()
            if hub.closed:
                raise HubClosed("the server is shutting down")
            if self.position >= hub.position:
                hub._join(self)  # no await since the check: the fan-out cannot slip in between
                self._live = True
                break
            through = hub.position
            page = await read_matching(hub.store, self.position, through, self.where, hub.queue_size)
            if len(page) < hub.queue_size:
                self.position = through
            if page:
                self.position = max(self.position, page[-1].global_position)
                return [(event, hub.prepare(event)) for event in page]
        self._raise_if_closed()
        if not self._queue:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._raise_if_closed()
        items = list(self._queue)
        self._queue.clear()
        if items:
            self.position = items[-1][0].global_position
        return items

    def _raise_if_closed(self) -> None:
        if self._closed is not None:
            raise self._closed

    def _offer(self, items: list[tuple[RecordedEvent, T]]) -> None:
        fresh = [item for item in items if item[0].global_position > self.position and self.where.matches(item[0])]
        if not fresh or self._closed is not None:
            return
        if len(self._queue) + len(fresh) > self._hub.queue_size:
            self._close(Dropped(f"too slow: more than {self._hub.queue_size} events waited to be sent"))
            self._hub.dropped += 1
            if self._hub._on_drop is not None:
                self._hub._on_drop()
            return
        self._queue.extend(fresh)
        self.peak = max(self.peak, len(self._queue))
        self._wake.set()

    def _close(self, why: Closed) -> None:
        self._closed = why
        self._queue.clear()  # the memory goes now, not when the reader comes back
        self._hub._leave(self)
        self._wake.set()


class EventHub(Generic[T]):
    """The process's one tailer. ``prepare`` turns an event into what readers send (done once
    per event, for every subscriber that wants it)."""

    def __init__(
        self,
        store: PostgresEventStore,
        prepare: Callable[[RecordedEvent], T],
        *,
        queue_size: int = 1000,
        poll_interval: float = 1.0,
        retry_interval: float = 1.0,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.store = store
        self.prepare = prepare
        self.queue_size = queue_size
        self._poll_interval = poll_interval
        self._retry_interval = retry_interval
        self._on_drop = on_drop
        self._subscribers: set[Subscription[T]] = set()
        self._task: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()
        self.position = 0  # every event up to here has been offered to the subscribers
        self.closed = False
        self.reads = 0  # batches read by the tailer (one reader, however many subscribers)
        self.dropped = 0  # subscribers dropped for being too slow

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    @contextlib.asynccontextmanager
    async def subscription(self, after: int | None, where: EventFilter) -> AsyncIterator[Subscription[T]]:
        """A subscription after position ``after`` (None: from the live tail on)."""
        await self.start()
        subscription = Subscription(self, self.position if after is None else after, where)
        try:
            yield subscription
        finally:
            self._leave(subscription)

    async def start(self) -> None:
        """Start the tailer at the head (once; later calls return at once)."""
        if self.closed:
            raise HubClosed("the server is shutting down")
        if self._task is not None:
            return
        async with self._starting:
            if self._task is None:
                self.position = await self.store.head_position()
                self._task = asyncio.create_task(self._run(), name="event-hub-tail")

    async def close(self) -> None:
        """End every subscription (``HubClosed``) and stop the tailer. Idempotent."""
        self.closed = True
        for subscription in list(self._subscribers):
            subscription._close(HubClosed("the server is shutting down"))
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                tail = self.store.subscribe(self.position, self.queue_size, poll_interval=self._poll_interval)
                async with contextlib.aclosing(tail):
                    async for batch in tail:
                        self.reads += 1
                        self._fan_out(batch)
            except Exception as exc:  # noqa: BLE001 - the tail resumes from its position
                log.warning("event hub: tail failed at position %d, retrying: %r", self.position, exc)
                await asyncio.sleep(self._retry_interval)

    def _fan_out(self, batch: list[RecordedEvent]) -> None:
        prepared: dict[int, T] = {}

        def item(event: RecordedEvent) -> tuple[RecordedEvent, T]:
            if event.global_position not in prepared:
                prepared[event.global_position] = self.prepare(event)
            return event, prepared[event.global_position]

        for subscription in list(self._subscribers):
            wanted = [e for e in batch if e.global_position > subscription.position and subscription.where.matches(e)]
            if wanted:
                subscription._offer([item(e) for e in wanted])
        self.position = max(self.position, batch[-1].global_position)

    def _join(self, subscription: Subscription[T]) -> None:
        self._subscribers.add(subscription)

    def _leave(self, subscription: Subscription[T]) -> None:
        self._subscribers.discard(subscription)
