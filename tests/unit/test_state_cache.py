from __future__ import annotations

from commands.states import StateCache


def test_keeps_the_newest_state_and_forgets_the_least_recently_used() -> None:
    cache = StateCache(capacity=2)
    cache.put("task-a", 2, "a2")
    cache.put("task-a", 1, "a1")  # an older load finishing late does not win
    assert cache.get("task-a") == (2, "a2")
    cache.put("task-b", 1, "b1")
    cache.get("task-a")  # a is now the most recently used
    cache.put("task-c", 1, "c1")
    assert cache.get("task-b") is None and cache.get("task-a") == (2, "a2") and len(cache) == 2


def test_streams_without_events_are_not_cached() -> None:
    cache = StateCache()
    cache.put("task-a", 0, None)
    assert cache.get("task-a") is None
