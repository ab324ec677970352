"""What every read model is: a category it follows, a table, and a pure ``apply``.

``apply(row, event) -> row`` takes the row as it is (None: no row yet) and one event of the
row's stream, already upcast to the current schema version, and returns the new row. It does no
I/O and never mutates its input. Every row carries ``version`` (the stream version it reflects)
and ``global_position`` (of the last event applied); the runtime never hands ``apply`` an event
at or below ``version``, nor one that skips a version.

Each projector is written as ``Steps``: one pure function per event type that returns the
columns the event sets (``step(row, data, recorded_at, global_position) -> changes``), and
``apply`` is ``Steps.apply``: check the event may follow the row, look its step up by type (a
dict, not a chain of ``if``), and return a copy of the row with the changes, stamped. The replay
folds a stream with the very same steps but updates one working row in place
(``projections.bulk.Fold``): the row it replaces is never seen again, so dropping the copy
changes nothing but the cost. A step reads everything before the row is touched, so an event a
step refuses (an exception) leaves the row as it was, on both paths.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from schemas.envelope import RecordedEvent, parse_uuid

Row: TypeAlias = dict[str, Any]
Apply: TypeAlias = Callable[[Row | None, RecordedEvent], Row]


class UnknownEvent(ValueError):
    """An event type this projection does not know: it is parked, never skipped."""

    def __init__(self, projection: str, event_type: str) -> None:
        super().__init__(f"projection {projection!r} does not know event type {event_type!r}")


class OutOfOrder(ValueError):
    """An event that cannot follow the row (a first event for an existing row, or the reverse)."""


Step: TypeAlias = Callable[[Row, Any, Any, int], Row]  # (row, data, recorded_at, global_position) -> changes


@dataclass(frozen=True, slots=True)
class Steps:
    """A projector as a table of steps. ``first``: the event type that starts a row (its step
    gets an empty row); every other type needs a row (a row at version 0 counts as none when
    ``zero_is_none``: the projects' rows the tasks projection makes to hold counts)."""

    name: str
    first: str
    steps: Mapping[str, Step]
    zero_is_none: bool = False

    def apply(self, row: Row | None, event: RecordedEvent) -> Row:
        base, step = self.step_for(row, event.type, event.stream, event.version)
        return stamped(base, event, **step(base, event.data, event.recorded_at, event.global_position))

    def step_for(self, row: Row | None, event_type: str, stream: str, version: int) -> tuple[Row, Step]:
        """The row an event starts from (``{}`` for the first event, else ``row``) and its step;
        ``OutOfOrder`` or ``UnknownEvent`` when the event cannot follow ``row``. The one place of
        these rules, for ``apply`` and for the replay's in-place fold."""
        if event_type == self.first:
            if row is not None and row.get("version", 0) > 0:
                raise OutOfOrder(f"{event_type} of {stream} starts a row that exists at v{row['version']}")
            base: Row = {}
        else:
            if row is None or (self.zero_is_none and row.get("version", 0) <= 0):
                # (a row at version 0 is one the tasks projection made for its counts: none here)
                raise OutOfOrder(f"{event_type} v{version} of {stream} has no row to apply to")
            base = row
        step = self.steps.get(event_type)
        if step is None:
            raise UnknownEvent(self.name, event_type)
        return base, step


@dataclass(frozen=True, slots=True)
class ReadModel:
    name: str  # the projection's name, also the table's
    category: str  # the stream category it follows
    key: str  # the id column; streams are ``<category>-<id>``
    columns: tuple[str, ...]  # the columns ``apply`` owns (and the upsert writes)
    apply: Apply
    steps: Steps | None = None  # the projector's steps, when it is written as steps (the replay's fast path)

    def entity_id(self, stream: str) -> uuid.UUID:
        return parse_uuid(stream[len(self.category) + 1 :])

    def key_of(self, stream: str) -> str | None:
        """The row id of ``stream`` as canonical text when it is ``<category>-<uuid>``, else None
        (parsed by ``parse_uuid``: the consumers do this once per record)."""
        entity = self._entity(stream)
        return None if entity is None else str(entity)

    def owns(self, stream: str) -> bool:
        """Whether ``stream`` is ``<category>-<uuid>`` of this model."""
        return self._entity(stream) is not None

    def _entity(self, stream: str) -> uuid.UUID | None:
        category = self.category
        if not stream.startswith(category) or stream[len(category) : len(category) + 1] != "-":
            return None
        try:
            return parse_uuid(stream[len(category) + 1 :])
        except ValueError:
            return None

    def stream_of(self, entity_id: uuid.UUID | str) -> str:
        return f"{self.category}-{entity_id}"


def stamped(row: Mapping[str, Any], event: RecordedEvent, **changes: Any) -> Row:
    """A copy of ``row`` with ``changes``, moved to ``event``'s version and position."""
    new = dict(row)
    new.update(changes)
    new["version"] = event.version
    new["global_position"] = event.global_position
    new["updated_at"] = event.recorded_at
    return new
