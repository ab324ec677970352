"""New tasks straight from PostgreSQL: a second, faster way for a submission to reach a worker.

The log stays the way work is *guaranteed* to arrive (a consumer group, at least once, offsets
committed only after the rows are written: workers/consumer.py). Besides it, each worker tails
the ``task`` category of the events table: woken by the store's NOTIFY after every append
(``taskstream_events``), it reads the ``task.submitted`` events past its position and ingests
those it has free slots for, as the log consumer does. That saves the relay -> broker -> fetch
hop (tens of milliseconds, more under load) between a submission and its start.

Why this never runs a task twice or loses one: ingestion is the same idempotent insert
(``INSERT ... ON CONFLICT DO NOTHING``; only the process whose insert made the row runs it, under
its lease), and the task's stream decides every attempt (StartTask for attempt n succeeds once).
So the two paths, and workers racing on them, at most find the row already there. A worker
with no free slot takes nothing from the tail: the log hands the task to whichever worker owns
its partition (it queues it for the claim loop if it cannot run it). Positions are handed out in
commit order (event_store/postgres.py), so advancing to the category's head seen in the same
statement never skips an event. The tail starts at the head and, after a failure, starts over
at the head: whatever it missed, the log delivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

import psycopg
from psycopg import sql

from event_store.postgres import NOTIFY_CHANNEL
from schemas.envelope import RecordedEvent

log = logging.getLogger("taskstream.workers")

COALESCE_SECONDS = 0.002  # after a wake-up, notifications that arrive within this join it

Ingest = Callable[[Sequence[RecordedEvent]], Awaitable[None]]  # TaskLogConsumer.take_now
FreeSlots = Callable[[], int]

_READ = """
WITH head AS (SELECT COALESCE(max(global_position), 0) AS p FROM events WHERE category = 'task')
SELECT (SELECT p FROM head), e.global_position, e.stream_id, e.version, e.event_id, e.schema_version, e.data, e.metadata, e.recorded_at
  FROM (SELECT 1) AS one
  LEFT JOIN events e ON e.category = 'task' AND e.global_position > %s AND e.global_position <= (SELECT p FROM head)
                    AND e.type = 'task.submitted'
 ORDER BY e.global_position
 LIMIT %s
"""


async def tail_submissions(database_url: str, ingest: Ingest, free_slots: FreeSlots, stop: asyncio.Event, *,
                           poll_seconds: float = 1.0, batch: int = 500) -> None:  # fmt: skip
    """Until ``stop``: on every NOTIFY (or ``poll_seconds`` without one), hand the new
    submissions to ``ingest`` while this worker has free slots."""
    while not stop.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
                position = await _head(conn)
                while not stop.is_set():
                    if free_slots() > 0:  # a full worker reads nothing: the log delivers
                        position = await _step(conn, position, ingest, free_slots, batch)
                    # Wait for the next append (notifications that came meanwhile end it at once),
                    # then take the ones arriving within COALESCE_SECONDS with it: under load one
                    # read covers several appends instead of one read per append.
                    async for _ in conn.notifies(timeout=poll_seconds, stop_after=1):
                        pass
                    async for _ in conn.notifies(timeout=COALESCE_SECONDS):
                        pass
        except (psycopg.Error, OSError) as exc:
            log.warning("worker tail: %r; starting over at the head (the log covers the gap)", exc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


async def _head(conn: psycopg.AsyncConnection) -> int:
    cur = await conn.execute("SELECT COALESCE(max(global_position), 0) FROM events WHERE category = 'task'")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def _step(conn: psycopg.AsyncConnection, position: int, ingest: Ingest, free_slots: FreeSlots, batch: int) -> int:
    """Read past ``position``; ingest what this worker can run now; return the new position."""
    while True:
        cur = await conn.execute(_READ, (position, batch))
        rows = await cur.fetchall()
        head = int(rows[0][0]) if rows else position
        events = [
            RecordedEvent(id=event_id, stream=stream, type="task.submitted", schema_version=schema_version, version=version,
                          global_position=at, recorded_at=recorded_at, data=data, metadata=metadata)  # fmt: skip
            for _, at, stream, version, event_id, schema_version, data, metadata, recorded_at in rows
            if at is not None
        ]
        if len(events) < batch:
            position = max(position, head)
        else:
            position = events[-1].global_position
        if events and free_slots() > 0:
            await ingest(events)
        if len(events) < batch:
            return position
