"""The near-cache's rules (pure): invalidations win races with fetches, unhealthy means empty."""

from __future__ import annotations

import asyncio

from gateway.nearcache import NearCache
from gateway.readmodels import Entry, Reads


def test_a_fetch_invalidated_while_in_flight_does_not_fill() -> None:
    near: NearCache[str] = NearCache(max_entries=10)
    near.healthy = True
    near.begin_fetch("k")
    near.invalidate(["k"])  # the message for a newer value overtook the GET's answer
    near.end_fetch("k", "old")
    assert near.get("k") is None
    near.begin_fetch("k")
    near.end_fetch("k", "new")
    assert near.get("k") == "new"


def test_a_flush_marks_every_fetch_in_flight_and_unhealthy_serves_nothing() -> None:
    near: NearCache[str] = NearCache(max_entries=10)
    near.healthy = True
    near.begin_fetch("a")
    near.end_fetch("a", "1")
    near.begin_fetch("b")
    near.invalidate(None)  # FLUSHALL, or the tracking connection was lost
    near.end_fetch("b", "2")
    assert near.get("a") is None and near.get("b") is None
    near.begin_fetch("c")
    near.end_fetch("c", "3")
    near.healthy = False
    assert near.get("c") is None


def test_entries_are_bounded_least_recently_used_first() -> None:
    near: NearCache[int] = NearCache(max_entries=2)
    near.healthy = True
    for key, value in (("a", 1), ("b", 2)):
        near.begin_fetch(key)
        near.end_fetch(key, value)
    assert near.get("a") == 1  # now b is the least recently used
    near.begin_fetch("c")
    near.end_fetch("c", 3)
    assert (near.get("a"), near.get("b"), near.get("c")) == (1, None, 3)
    assert len(near) == 2


async def test_concurrent_misses_of_one_key_share_one_database_read() -> None:
    reads = Reads.__new__(Reads)  # only the single-flight part, with no servers behind it
    reads._flights = {}
    loads = 0
    gate = asyncio.Event()

    async def load() -> Entry | None:
        nonlocal loads
        loads += 1
        await gate.wait()
        return Entry(1, b"{}", {}, '"1"')

    waiting = [asyncio.create_task(reads._single_flight("k", load)) for _ in range(50)]
    await asyncio.sleep(0.01)
    gate.set()
    results = await asyncio.gather(*waiting)
    assert loads == 1 and all(r == Entry(1, b"{}", {}, '"1"') for r in results)
    assert reads._flights == {}  # the next miss reads again


async def test_a_failed_shared_read_fails_every_waiter_and_is_not_kept() -> None:
    reads = Reads.__new__(Reads)
    reads._flights = {}

    async def load() -> Entry | None:
        await asyncio.sleep(0.01)
        raise ConnectionError("database down")

    results = await asyncio.gather(*(reads._single_flight("k", load) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert reads._flights == {}
