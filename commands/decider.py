"""What every decider shares: ``fold`` over events, and a record bundling one aggregate."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

S = TypeVar("S")
C = TypeVar("C")
E = TypeVar("E")


class InvalidHistory(RuntimeError):
    """An event that cannot follow the state it is applied to: the stream is corrupt."""

    def __init__(self, state: object, event: object) -> None:
        super().__init__(f"event {type(event).__name__} cannot follow state {state!r}")
        self.state = state
        self.event = event


def fold(evolve: Callable[[S, E], S], initial: S, events: Iterable[E]) -> S:
    """The state after applying ``events`` one by one to ``initial``."""
    state = initial
    for event in events:
        state = evolve(state, event)
    return state


@dataclass(frozen=True, slots=True)
class Decider(Generic[S, C, E]):
    """One aggregate: the handler loads a stream, folds it, decides and appends."""

    category: str
    initial: S
    decide: Callable[[S, C], Sequence[E]]
    evolve: Callable[[S, E], S]

    def fold(self, events: Iterable[E]) -> S:
        return fold(self.evolve, self.initial, events)
