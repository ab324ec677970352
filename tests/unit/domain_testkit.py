"""Shared helpers for the domain unit tests: storage round-trip and Hypothesis strategies."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from hypothesis import strategies as st

from commands.decider import Decider
from commands.errors import DomainError
from schemas.base import DomainEvent
from schemas.catalog import registry
from schemas.envelope import RecordedEvent

E = TypeVar("E", bound=DomainEvent)

RECORDED_AT = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def through_store(events: Sequence[E], stream: str = "test-00000000-0000-0000-0000-000000000000") -> list[Any]:
    """Each event as a reader gets it back: NewEvent -> stored row -> JSON text -> decoded."""
    decoded = []
    for position, event in enumerate(events, start=1):
        new = event.to_new_event()
        row = RecordedEvent(
            id=new.id,
            stream=stream,
            type=new.type,
            schema_version=new.schema_version,
            version=position,
            global_position=position,
            recorded_at=RECORDED_AT,
            data=new.data,
            metadata={"actor": "test"},
        )
        raw = json.loads(json.dumps(row.to_json()))
        decoded.append(registry().decode(RecordedEvent.from_json(raw)))
    return decoded


# -- strategies -----------------------------------------------------------------------

printable = st.characters(exclude_categories=("Cs", "Cc"))
names = st.text(printable, min_size=1, max_size=100).filter(lambda s: bool(s.strip()))
free_text = st.text(printable, max_size=200)
emails = st.emails().filter(lambda e: len(e) <= 254 and len(e.split("@")[0]) <= 64 and "." in e.split("@")[1])
password_hashes = st.text("abcdefghijklmnopqrstuvwxyz0123456789$=,+/", max_size=90).map(lambda s: "$argon2id$" + s)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
payloads = st.dictionaries(st.text(max_size=20), json_values, max_size=5)
task_kinds = st.from_regex(r"[a-z][a-z0-9_.-]{0,63}", fullmatch=True)
attempts = st.integers(min_value=1, max_value=20)


# -- one aggregate driven by commands, for the state machines ---------------------------


class Aggregate:
    """One stream's state and history, advanced one decision at a time."""

    def __init__(self, decider: Decider[Any, Any, Any]) -> None:
        self.decider = decider
        self.state: Any = decider.initial
        self.history: list[DomainEvent] = []

    def run(self, command: Any) -> list[DomainEvent] | DomainError:
        """The events decided (and applied), or the domain error (state left as it was)."""
        before = self.state
        try:
            events = list(self.decider.decide(before, command))
        except DomainError as error:
            return error
        assert list(self.decider.decide(before, command)) == events  # decide is deterministic
        for event in events:
            self.state = self.decider.evolve(self.state, event)
        self.history.extend(events)
        return events

    def replayed(self) -> Any:
        """The state folded from the history as a reader would load it from the store."""
        return self.decider.fold(through_store(self.history))
