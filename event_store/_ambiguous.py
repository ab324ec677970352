"""Ambiguous commits: the connection was lost while a group commit's statement ran.

The transaction may have committed (the answer was lost on the way back) or not. Event ids are
made by the client and unique in ``events``, so the store looks them up: an append whose events
are there was written, and its answer is rebuilt from the rows; an append whose events are not
there was not written (its transaction rolled back, or it was refused inside a transaction that
committed), so it is queued again, once, with the same event ids: the unique index makes a
second write of the same events impossible, and the retry gets an exact answer. Only if the
lookup itself fails is the outcome reported as unknown (503).

An error the server answered with (a lock or statement timeout, a refused row) is not
ambiguous: the statement rolled back. Server shutdowns (SQLSTATE class 57P) are: the session
can be ended after the commit.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import psycopg

from event_store.errors import StoreUnavailable
from schemas.envelope import AppendResult, ExpectedVersion

LOOKUP = "SELECT event_id, version, global_position FROM events WHERE event_id = ANY(%s::uuid[])"


class _Part(Protocol):
    stream: str
    expected_version: ExpectedVersion
    events: Sequence[Any]


class _Append(Protocol):
    parts: list[Any]
    requeued: bool


A = TypeVar("A", bound=_Append)
Fetch = Callable[[str, list[Any]], Awaitable[list[tuple[Any, ...]]]]  # raises StoreUnavailable
REQUEUED = StoreUnavailable("queued again")  # the outcome of an append queued again: answered later


def is_ambiguous(exc: psycopg.Error) -> bool:
    """True when the statement may have committed although it raised."""
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate is None:
        return isinstance(exc, psycopg.OperationalError)  # the connection broke: no answer came
    return sqlstate.startswith("57P")


def event_ids(batch: Sequence[_Append]) -> list[uuid.UUID]:
    return [event.id for append in batch for part in append.parts for event in part.events]


def written(append: _Append, rows: Mapping[uuid.UUID, tuple[int, int]]) -> list[AppendResult] | None:
    """The append's results if its events are in ``rows`` (event id -> version, position);
    None if they are not (or it wrote no events, so the lookup cannot tell)."""
    ids = [event.id for part in append.parts for event in part.events]
    if not ids or any(i not in rows for i in ids):
        return None
    results = []
    for part in append.parts:
        part_ids = tuple(event.id for event in part.events)
        if part_ids:
            version, first, last = rows[part_ids[-1]][0], rows[part_ids[0]][1], rows[part_ids[-1]][1]
        else:  # a guard written with the others: it held
            expected = part.expected_version
            version, first, last = (expected if isinstance(expected, int) else 0), None, None
        results.append(AppendResult(part.stream, version, first, last, part_ids))
    return results


async def resolve(fetch: Fetch, batch: Sequence[A], exc: psycopg.Error) -> tuple[list[list[AppendResult] | BaseException], list[A]]:
    """Each append's outcome (REQUEUED for those to queue again) and the appends to queue again.
    The lookup is tried a few times over about two seconds (a database restarting)."""
    rows: dict[uuid.UUID, tuple[int, int]] | None = None
    for delay in (0.0, 0.2, 0.5, 1.0):
        await asyncio.sleep(delay)
        try:
            found = await fetch(LOOKUP, [event_ids(batch)])
        except StoreUnavailable:
            continue
        rows = {row[0]: (int(row[1]), int(row[2])) for row in found}
        break
    if rows is None:
        unknown = StoreUnavailable(f"the connection was lost during the commit and its outcome is unknown: {type(exc).__name__}")
        return [unknown] * len(batch), []
    outcomes: list[list[AppendResult] | BaseException] = []
    again: list[A] = []
    for append in batch:
        results = written(append, rows)
        if results is not None:
            outcomes.append(results)
        elif append.requeued:
            outcomes.append(StoreUnavailable(f"the event store failed twice: {type(exc).__name__}"))
        else:
            again.append(append)
            outcomes.append(REQUEUED)
    return outcomes, again
