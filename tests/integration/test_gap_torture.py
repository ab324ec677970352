"""No tailing reader ever skips an event, although PostgreSQL commits out of sequence order.

The first torture test runs many writers on their own connections (not through the store's
group commit, so the database-side mechanism is what is tested), with random delays inside
their transactions and random rollbacks, while a reader tails ``read_all``. The second runs
100,000 events (``TASKSTREAM_TORTURE_EVENTS``) through the store's own append paths (fast path
and taskstream_append, three stores) mixed with lingering raw transactions, while
``subscribe()``, which the relay uses, tails. Each reader must see exactly the committed set,
in increasing position order, with no duplicates.

The deterministic tests below show the race itself: on a table without the append lock a reader
does skip an event; on ``events`` the same interleaving cannot happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import uuid

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from event_store.errors import WrongExpectedVersion
from event_store.postgres import PostgresEventStore
from schemas.envelope import ANY, NO_STREAM, NewEvent

INSERT = (
    "INSERT INTO events (stream_id, version, event_id, type, data) VALUES (%s, %s, %s, 'torture.event', %s::jsonb)"
)


async def test_tailing_reader_sees_exactly_the_committed_events(store: PostgresEventStore, database_url: str) -> None:
    run = uuid.uuid4().hex
    start = await store.head_position()
    committed: set[uuid.UUID] = set()
    rolled_back: set[uuid.UUID] = set()
    writers_done = asyncio.Event()
    rng = random.Random(run)

    async def writer(wid: int) -> None:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            for txn in range(25):
                stream = f"torture-{run}-{wid}-{txn}"
                ids = [uuid.uuid4() for _ in range(rng.randint(1, 3))]
                rollback = rng.random() < 0.2
                try:
                    async with conn.transaction():
                        await asyncio.sleep(rng.random() * 0.004)
                        for version, event_id in enumerate(ids, start=1):
                            await conn.execute(INSERT, (stream, version, event_id, json.dumps({"run": run})))
                        await asyncio.sleep(rng.random() * 0.004)
                        if rollback:
                            raise psycopg.Rollback
                except psycopg.Rollback:
                    pass
                (rolled_back if rollback else committed).update(ids)

    seen: list[tuple[int, uuid.UUID]] = []

    async def reader() -> None:
        position = start
        while True:
            finished = writers_done.is_set()
            batch = await store.read_all(position, 200)
            if batch:
                position = batch[-1].global_position
                seen.extend((e.global_position, e.id) for e in batch if e.stream.startswith(f"torture-{run}-"))
            elif finished:
                return  # writers were done before this empty read: the reader has caught up
            else:
                await asyncio.sleep(0.001)

    read = asyncio.create_task(reader())
    await asyncio.gather(*(writer(w) for w in range(16)))
    writers_done.set()
    await asyncio.wait_for(read, timeout=60)

    positions = [p for p, _ in seen]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    ids = [i for _, i in seen]
    assert len(ids) == len(set(ids)), "an event was delivered twice"
    assert set(ids) == committed, f"missed {len(committed - set(ids))}, extra {len(set(ids) - committed)}"
    assert not set(ids) & rolled_back
    assert len(committed) > 100 and rolled_back  # the run really exercised both paths


async def _interleave(database_url: str, table: str, run: str) -> tuple[list[int], list[int]]:
    """Writer A inserts first but commits last; B inserts after A and commits first. A reader
    that reads between the two commits and then tails from there: what does it see?"""
    insert = f"INSERT INTO {table} (stream_id, version, event_id, type, data) VALUES (%s, 1, %s, 'race', '{{}}') RETURNING global_position"
    async with (
        await psycopg.AsyncConnection.connect(database_url) as a,
        await psycopg.AsyncConnection.connect(database_url) as b,
        await psycopg.AsyncConnection.connect(database_url, autocommit=True) as r,
    ):
        cur = await r.execute(f"SELECT COALESCE(max(global_position), 0) FROM {table}")
        start = (await cur.fetchone())[0]  # type: ignore[index]
        cur = await a.execute(insert, (f"race-{run}-a", uuid.uuid4()))
        pos_a = (await cur.fetchone())[0]  # type: ignore[index]
        b_insert = asyncio.create_task(b.execute(insert, (f"race-{run}-b", uuid.uuid4())))
        done, _ = await asyncio.wait({b_insert}, timeout=0.5)
        if done:  # no lock: B got its position and commits before A
            pos_b = (await b_insert.result().fetchone())[0]  # type: ignore[index]
            await b.commit()
        query = f"SELECT global_position FROM {table} WHERE global_position > %s AND stream_id LIKE %s ORDER BY 1"
        cur = await r.execute(query, (start, f"race-{run}-%"))
        first_read = [row[0] for row in await cur.fetchall()]
        tail_from = max(first_read, default=start)
        await a.commit()
        if not done:  # with the lock, B waited for A and only now gets its position
            pos_b = (await (await b_insert).fetchone())[0]  # type: ignore[index]
            await b.commit()
        cur = await r.execute(query, (tail_from, f"race-{run}-%"))
        second_read = [row[0] for row in await cur.fetchall()]
        assert pos_a and pos_b
        return first_read + second_read, sorted([pos_a, pos_b])


async def test_without_the_append_lock_a_reader_skips_an_event(owner_database_url: str) -> None:
    database_url = owner_database_url  # creating a table takes the owner role
    run = uuid.uuid4().hex[:8]
    table = f"race_unlocked_{run}"
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(
            f"CREATE TABLE {table} (global_position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " stream_id text, version int, event_id uuid, type text, data jsonb)"
        )
        try:
            seen, committed = await _interleave(database_url, table, run)
        finally:
            await conn.execute(f"DROP TABLE {table}")
    assert seen != committed and len(seen) == 1, "the control should have shown the skipped event"


async def test_with_the_append_lock_the_same_interleaving_skips_nothing(database_url: str) -> None:
    seen, committed = await _interleave(database_url, "events", uuid.uuid4().hex[:8])
    assert seen == committed


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writers=st.integers(min_value=2, max_value=12), existing=st.integers(min_value=0, max_value=3))
async def test_concurrent_appends_at_the_same_version_exactly_one_wins(
    store: PostgresEventStore, writers: int, existing: int
) -> None:
    stream = f"task-{uuid.uuid4()}"
    if existing:
        await store.append(stream, NO_STREAM, [NewEvent("seed", {}) for _ in range(existing)])
    expected = existing if existing else NO_STREAM
    outcomes = await asyncio.gather(
        *(store.append(stream, expected, [NewEvent("race", {"w": w})]) for w in range(writers)), return_exceptions=True
    )
    assert sum(not isinstance(o, BaseException) for o in outcomes) == 1
    assert all(isinstance(o, WrongExpectedVersion) for o in outcomes if isinstance(o, BaseException))
    assert await store.stream_version(stream) == existing + 1


@pytest.mark.parametrize("count", [1, 50])
async def test_store_appends_land_in_commit_order(store: PostgresEventStore, count: int) -> None:
    """Group-committed appends: positions within one stream follow versions."""
    stream = f"task-{uuid.uuid4()}"
    await asyncio.gather(*(store.append(stream, "any", [NewEvent("x", {"i": i})]) for i in range(count)))
    events = await store.read_stream(stream)
    assert [e.version for e in events] == list(range(1, count + 1))
    assert [e.global_position for e in events] == sorted(e.global_position for e in events)


async def test_two_stores_racing_on_shared_streams_stay_exact(store: PostgresEventStore, database_url: str) -> None:
    """Two processes' worth of group commit (two pools) race with pinned versions on a few
    streams: the fast path's stale-snapshot guard and its fallback must keep every answer exact."""
    other = await PostgresEventStore.connect(database_url, max_size=4)
    streams = [f"task-{uuid.uuid4()}" for _ in range(3)]
    wins: dict[str, int] = {s: 0 for s in streams}
    conflicts = 0

    async def writer(s: PostgresEventStore, seed: int) -> None:
        nonlocal conflicts
        rng = random.Random(seed)
        for _ in range(30):
            stream = rng.choice(streams)
            version = await s.stream_version(stream)
            try:
                result = await s.append(stream, version or NO_STREAM, [NewEvent("race", {"seed": seed})])
            except WrongExpectedVersion as exc:
                assert exc.actual > version  # refused only because someone else got there first
                conflicts += 1
                continue
            assert result.version == version + 1
            wins[stream] += 1

    before = store.commit_counts.copy() + other.commit_counts
    try:
        await asyncio.gather(*(writer(store if i % 2 else other, i) for i in range(12)))
    finally:
        await other.close()
    counts = store.commit_counts + other.commit_counts
    counts.subtract(before)
    assert counts["fast"] > 0 and counts["fast_guard_refused"] > 0  # both paths ran
    for stream in streams:
        events = await store.read_stream(stream)
        assert [e.version for e in events] == list(range(1, wins[stream] + 1))
    assert conflicts > 0  # the race really happened


async def test_fast_path_sees_a_commit_made_while_it_waited_for_the_lock(store: PostgresEventStore, database_url: str) -> None:
    """Another writer holds the append lock and commits version 1 while the fast path's
    statement waits for the lock with a snapshot that cannot see it: the check made after the
    lock sees it, nothing is inserted, and the answer, decided under the lock, is exact."""
    stream = f"task-{uuid.uuid4()}"
    before = store.commit_counts["fast_guard_refused"]
    async with await psycopg.AsyncConnection.connect(database_url) as other:
        await other.execute(INSERT, (stream, 1, uuid.uuid4(), json.dumps({})))  # holds the lock until commit
        append = asyncio.create_task(store.append(stream, NO_STREAM, [NewEvent("late", {})]))
        await asyncio.sleep(0.3)  # the fast path's statement has started and waits for the lock
        assert not append.done()
        await other.commit()
    with pytest.raises(WrongExpectedVersion) as info:
        await append
    assert info.value.actual == 1
    assert store.commit_counts["fast_guard_refused"] == before + 1
    assert [e.type for e in await store.read_stream(stream)] == ["torture.event"]


@pytest.mark.parametrize("key", [None, "with-key"])  # the fast path, and taskstream_append
async def test_a_guard_sees_a_commit_made_while_it_waited_for_the_lock(database_url: str, key: str | None) -> None:
    """A guard (a part that writes nothing) on a stream another process changes while this
    append waits for the lock: the append must be refused, on either path."""
    from event_store.protocol import StreamAppend

    mine, theirs = await PostgresEventStore.connect(database_url), await PostgresEventStore.connect(database_url)
    try:
        guarded = f"project-{uuid.uuid4()}"
        await mine.append(guarded, NO_STREAM, [NewEvent("project.created", {})])
        async with await psycopg.AsyncConnection.connect(database_url) as holder:
            await holder.execute("SELECT pg_advisory_xact_lock(7306010001)")
            change = asyncio.create_task(theirs.append(guarded, 1, [NewEvent("project.archived", {})]))
            await asyncio.sleep(0.2)  # queued first for the lock
            parts = [StreamAppend(f"task-{uuid.uuid4()}", NO_STREAM, [NewEvent("task.submitted", {})]), StreamAppend(guarded, 1, [])]
            append = asyncio.create_task(mine.append_streams(parts, idempotency_key=key and f"{key}-{uuid.uuid4()}"))
            await asyncio.sleep(0.2)
            await holder.commit()
        await change
        with pytest.raises(WrongExpectedVersion) as info:
            await append
        assert (info.value.stream, info.value.actual) == (guarded, 2)
    finally:
        await mine.close()
        await theirs.close()


TORTURE_EVENTS = int(os.environ.get("TASKSTREAM_TORTURE_EVENTS", "100000"))


async def test_subscribe_sees_exactly_what_the_stores_own_append_paths_committed(store: PostgresEventStore, database_url: str) -> None:
    """100,000 events through the store's own paths, from three stores (three processes' worth
    of group commit): pinned appends (the fast path), appends with idempotency keys (decided by
    taskstream_append), appends refused for a wrong version (nothing written), plus raw
    transactions that linger and roll back; while ``subscribe()``, the relay's reader, tails.
    It must deliver exactly the committed events, in increasing position order, once each."""
    run = uuid.uuid4().hex
    prefix = f"torture-{run}-"
    start = await store.head_position()
    stores = [store, *[await PostgresEventStore.connect(database_url, max_size=6) for _ in range(2)]]
    committed: set[uuid.UUID] = set()
    refused: set[uuid.UUID] = set()
    budget = [TORTURE_EVENTS]

    async def writer(s: PostgresEventStore, wid: int) -> None:
        rng = random.Random(f"{run}-{wid}")
        stream, version = f"{prefix}{wid}-0", 0
        while budget[0] > 0:
            events = [NewEvent("torture.event", {"w": wid}) for _ in range(rng.randint(1, 4))]
            budget[0] -= len(events)
            roll = rng.random()
            try:
                if roll < 0.05:  # a stale version: refused, nothing written
                    await s.append(stream, version + 5, events)
                    raise AssertionError("a stale append was accepted")
                if roll < 0.45:
                    result = await s.append(stream, version or NO_STREAM, events)  # pinned: the fast path
                else:
                    result = await s.append(stream, ANY, events, idempotency_key=f"{run}-{wid}-{rng.random()}")
            except WrongExpectedVersion:
                refused.update(e.id for e in events)
                continue
            committed.update(e.id for e in events)
            version = result.version
            if version > 50:
                stream, version = f"{prefix}{wid}-{uuid.uuid4().hex[:6]}", 0

    async def lingering(wid: int) -> None:
        rng = random.Random(f"{run}-raw-{wid}")
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            txn = 0
            while budget[0] > 0:
                txn += 1
                ids = [uuid.uuid4() for _ in range(rng.randint(1, 3))]
                rollback = rng.random() < 0.3
                try:
                    async with conn.transaction():
                        for version, event_id in enumerate(ids, start=1):
                            await conn.execute(INSERT, (f"{prefix}raw{wid}-{txn}", version, event_id, json.dumps({})))
                        await asyncio.sleep(rng.random() * 0.003)  # holds the append lock a while
                        if rollback:
                            raise psycopg.Rollback
                except psycopg.Rollback:
                    pass
                (refused if rollback else committed).update(ids)
                await asyncio.sleep(rng.random() * 0.01)

    seen: list[tuple[int, uuid.UUID]] = []
    reached = [start]

    async def subscriber() -> None:
        subscription = store.subscribe(start, 1000, poll_interval=0.2)
        async with contextlib.aclosing(subscription):
            async for batch in subscription:
                seen.extend((e.global_position, e.id) for e in batch if e.stream.startswith(prefix))
                reached[0] = batch[-1].global_position

    reading = asyncio.create_task(subscriber())
    try:
        await asyncio.gather(*(writer(s, i * 10 + w) for i, s in enumerate(stores) for w in range(8)), *(lingering(w) for w in range(3)))
        target = await store.head_position()
        async with asyncio.timeout(120):
            while reached[0] < target:
                await asyncio.sleep(0.05)
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        for other in stores[1:]:
            await other.close()

    positions = [p for p, _ in seen]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    ids = [i for _, i in seen]
    assert len(ids) == len(set(ids)), "an event was delivered twice"
    assert set(ids) == committed, f"missed {len(committed - set(ids))}, extra {len(set(ids) - committed)}"
    assert not set(ids) & refused
    assert len(committed) >= TORTURE_EVENTS * 0.8 and refused
