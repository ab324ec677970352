"""Reads of the audit log: the ``events`` table filtered, in global order, a page at a time.

Why a page never skips an event that appears later
--------------------------------------------------
Positions are handed out in commit order (see ``event_store.postgres``): once a reader sees
position P, no event below P can still commit. A client that pages with ``after_position`` = the
last position it got therefore reads every matching event exactly once, however the writes
interleave with its pages. Rolled-back positions are holes that never fill.

Cost: every filter is a condition on one index range scan in global order (the primary key, the
``(category, global_position)`` index, or ``(stream_id, version)`` for one stream, whose versions
follow global order); a page stops after ``limit`` matches, so a selective filter over a long log
may read many rows to fill one page, bounded by the store's statement timeout.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from event_store.postgres import PostgresEventStore
from schemas.envelope import RecordedEvent


@dataclass(frozen=True, slots=True)
class LogFilter:
    """Which events: each field narrows the answer; None leaves it open."""

    categories: Collection[str]  # never empty: the categories the caller may read (and asked for)
    stream: str | None = None
    types: Collection[str] | None = None
    actor: str | None = None
    after_position: int = 0  # exclusive
    before_position: int | None = None  # exclusive
    after_time: datetime | None = None  # exclusive
    before_time: datetime | None = None  # exclusive


def log_conditions(where: LogFilter) -> tuple[list[str], list[Any]]:
    """The SQL conditions of a page and their parameters (pure, so its shape can be unit-tested)."""
    optional = (
        ("stream_id = %s", where.stream),
        ("type = ANY(%s)", None if where.types is None else list(where.types)),
        ("metadata->>'actor' = %s", where.actor),
        ("global_position < %s", where.before_position),
        ("recorded_at > %s", where.after_time),
        ("recorded_at < %s", where.before_time),
    )
    conditions = ["global_position > %s", "category = ANY(%s)"]
    params: list[Any] = [where.after_position, list(where.categories)]
    for condition, value in optional:
        if value is not None:
            conditions.append(condition)
            params.append(value)
    return conditions, params


async def read_log(store: PostgresEventStore, where: LogFilter, limit: int) -> list[RecordedEvent]:
    """Up to ``limit`` events matching ``where``, in global order."""
    if not where.categories:
        return []
    conditions, params = log_conditions(where)
    return await store.read_where(conditions, params, limit=limit)


async def read_stream_page(store: PostgresEventStore, stream: str, after_version: int, limit: int) -> list[RecordedEvent]:
    """One stream's events after ``after_version``, in order, at most ``limit``."""
    return await store.read_stream(stream, after_version + 1, limit)


async def read_streams_until(
    store: PostgresEventStore, streams: Collection[str], *, position: int | None = None, time: datetime | None = None
) -> list[RecordedEvent]:
    """Every event of ``streams`` at or below ``position`` (or recorded at or before ``time``),
    by stream then version: the streams as they were then."""
    if not streams:
        return []
    conditions, params = ["stream_id = ANY(%s)"], [list(streams)]
    if position is not None:
        conditions.append("global_position <= %s")
        params.append(position)
    if time is not None:
        conditions.append("recorded_at <= %s")
        params.append(time)
    return await store.read_where(conditions, params, order_by="stream_id, version")
