"""The shared tailer (event_store/tail.py) over real PostgreSQL, in a database of its own."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator

import pytest

from event_store.postgres import PostgresEventStore
from event_store.tail import Dropped, EventFilter, EventHub
from schemas.envelope import ANY, NewEvent


@pytest.fixture(scope="module")
async def hub_store(isolated_database_url: str) -> AsyncIterator[PostgresEventStore]:
    store = await PostgresEventStore.connect(isolated_database_url, min_size=2, max_size=12)
    yield store
    await store.close()


async def append(store: PostgresEventStore, n: int) -> None:
    for _ in range(n):
        category = random.choice(["task", "user", "project"])
        await store.append(f"{category}-{uuid.uuid4()}", ANY, [NewEvent(f"{category}.touched", {"n": 1}) for _ in range(random.randint(1, 3))])


async def positions(store: PostgresEventStore, after: int, categories: frozenset[str] | None = None) -> list[int]:
    async with store.pool.connection() as conn:
        cur = await conn.execute("SELECT global_position, category FROM events WHERE global_position > %s ORDER BY 1", (after,))
        return [p for p, c in await cur.fetchall() if categories is None or c in categories]


async def listeners(store: PostgresEventStore) -> int:
    async with store.pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query ILIKE 'LISTEN%%'")
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def test_every_subscriber_gets_exactly_the_log_after_its_position(hub_store: PostgresEventStore) -> None:
    store = hub_store
    hub: EventHub[None] = EventHub(store, lambda _: None, queue_size=200, poll_interval=0.2)
    writers = [asyncio.create_task(append(store, 40)) for _ in range(4)]
    results = []
    try:
        for i in range(10):
            where = EventFilter(frozenset({"task"}) if i % 3 == 0 else None, None)
            after = random.randint(0, await store.head_position()) if i % 4 else None
            subscription_cm = hub.subscription(after, where)
            subscription = await subscription_cm.__aenter__()
            results.append((subscription.position, where, subscription, subscription_cm, []))
            await asyncio.sleep(0.05)
        await asyncio.gather(*writers)
        head = await store.head_position()
        async with asyncio.timeout(60):
            for start, where, subscription, _, got in results:
                while subscription.position < head:
                    got.extend(e.global_position for e, _ in await subscription.next(0.2))
        for start, where, _, _, got in results:
            assert got == await positions(store, start, where.categories), "a gap or a duplicate"
        assert await listeners(store) == 1, "one LISTEN connection for every subscriber"
    finally:
        for *_, cm, _ in results:
            await cm.__aexit__(None, None, None)
        await hub.close()


async def test_a_subscriber_that_does_not_read_is_dropped_with_bounded_memory(hub_store: PostgresEventStore) -> None:
    store = hub_store
    hub: EventHub[None] = EventHub(store, lambda _: None, queue_size=30, poll_interval=0.2)
    try:
        async with hub.subscription(None, EventFilter()) as slow, hub.subscription(None, EventFilter()) as fast:
            await fast.next(0.01)  # both join the live tail
            await slow.next(0.01)
            got = 0
            for _ in range(40):
                await append(store, 5)
                got += len(await fast.next(2.0))
            with pytest.raises(Dropped, match="too slow"):
                await slow.next(0.1)
            assert slow.peak <= 30 and hub.dropped == 1 and hub.subscribers == 1
            assert got > 30 and fast.peak <= 30  # the reader that keeps up stays
    finally:
        await hub.close()
