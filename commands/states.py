"""Folded aggregate states kept in memory between commands.

Streams only grow and events never change, so a state folded up to version V stays true for
version V forever: a cached state can be behind, never wrong. A load reads only the events
after it (usually none) instead of the whole stream, and decodes and folds only those.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


class StateCache:
    def __init__(self, capacity: int = 10_000) -> None:
        self._capacity = capacity
        self._states: OrderedDict[str, tuple[int, Any]] = OrderedDict()

    def get(self, stream: str) -> tuple[int, Any] | None:
        hit = self._states.get(stream)
        if hit is not None:
            self._states.move_to_end(stream)
        return hit

    def put(self, stream: str, version: int, state: Any) -> None:
        if version <= 0:
            return  # nothing to remember about a stream with no events
        known = self._states.get(stream)
        if known is not None and known[0] >= version:
            return  # a concurrent load got further: keep the newer state
        self._states[stream] = (version, state)
        self._states.move_to_end(stream)
        if len(self._states) > self._capacity:
            self._states.popitem(last=False)

    def __len__(self) -> int:
        return len(self._states)
