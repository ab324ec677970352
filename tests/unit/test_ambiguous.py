"""Which store failures leave a commit's outcome unknown, and answers rebuilt from the table."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import psycopg
import pytest

from event_store import _ambiguous
from event_store.protocol import StreamAppend
from schemas.envelope import NO_STREAM, NewEvent


@pytest.mark.parametrize(
    ("error", "ambiguous"),
    [
        (psycopg.OperationalError("server closed the connection unexpectedly"), True),  # no answer came
        (psycopg.errors.AdminShutdown(), True),  # ended by a shutdown, perhaps after the commit
        (psycopg.errors.LockNotAvailable(), False),  # lock_timeout: rolled back
        (psycopg.errors.QueryCanceled(), False),  # statement_timeout: rolled back
        (psycopg.errors.UniqueViolation(), False),
    ],
)
def test_only_a_lost_answer_is_ambiguous(error: psycopg.Error, ambiguous: bool) -> None:
    assert _ambiguous.is_ambiguous(error) is ambiguous


@dataclass
class Append:
    parts: list[StreamAppend]
    requeued: bool = field(default=False)


def test_an_append_is_written_only_if_all_its_events_are_found() -> None:
    events = [NewEvent("x", {}), NewEvent("x", {})]
    guard = StreamAppend("project-1", 4, [])
    append = Append([StreamAppend("task-1", NO_STREAM, events), guard])
    rows = {events[0].id: (1, 10), events[1].id: (2, 11)}
    (task, guarded) = _ambiguous.written(append, rows) or ()
    assert (task.version, task.first_position, task.last_position) == (2, 10, 11)
    assert (guarded.version, guarded.first_position) == (4, None)
    assert _ambiguous.written(append, {events[0].id: (1, 10)}) is None
    assert _ambiguous.written(Append([guard]), rows) is None  # no events: the table cannot tell
    assert _ambiguous.event_ids([append]) == [e.id for e in events] and all(isinstance(i, uuid.UUID) for i in _ambiguous.event_ids([append]))
