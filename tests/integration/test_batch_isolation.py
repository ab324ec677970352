"""One bad append in a group commit fails alone: the others in its batch are written.

Each test puts its appends in one batch (they are all queued before the store's writer runs)
and checks, through the store's counters, which path the batch took.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from event_store.postgres import PostgresEventStore
from schemas.envelope import ANY, NO_STREAM, NewEvent


@pytest.fixture
async def fresh_store(database_url: str):  # noqa: ANN201 - a store whose batches are this test's only
    store = await PostgresEventStore.connect(database_url, max_size=4)
    try:
        yield store
    finally:
        await store.close()


@pytest.mark.parametrize("expected", [NO_STREAM, ANY], ids=["fast-path", "taskstream_append"])
async def test_an_append_the_database_refuses_fails_alone(fresh_store: PostgresEventStore, expected: str) -> None:
    """schema_version 0 passes the store's checks but not the table's CHECK: sent straight into
    a batch with good appends, it is found by committing each append alone (_commit_alone)."""
    streams = [f"task-{uuid.uuid4()}" for _ in range(4)]
    events = [NewEvent("task.touched", {"i": i}, schema_version=0 if i == 2 else 1) for i in range(4)]
    outcomes = await asyncio.gather(
        *(fresh_store.append(s, expected, [e]) for s, e in zip(streams, events, strict=True)), return_exceptions=True
    )
    assert isinstance(outcomes[2], ValueError) and "refused" in str(outcomes[2])
    for i in (0, 1, 3):
        assert getattr(outcomes[i], "version", outcomes[i]) == 1
        assert [e.id for e in await fresh_store.read_stream(streams[i])] == [events[i].id]
    assert await fresh_store.read_stream(streams[2]) == []
    counts = fresh_store.commit_counts
    assert counts["fast" if expected == NO_STREAM else "decided_under_lock"] >= 3  # the good ones, alone


async def test_a_duplicate_event_id_inside_a_fast_path_batch_falls_back_and_fails_alone(fresh_store: PostgresEventStore) -> None:
    """Two pinned appends in one batch carry the same event id: the fast path's INSERT collides
    (UniqueViolation), the batch goes to taskstream_append, which collides too, and each append
    is then committed alone: the first is written, the duplicate refused."""
    shared = uuid.uuid4()
    streams = [f"task-{uuid.uuid4()}" for _ in range(3)]
    events = [NewEvent("task.touched", {"i": 0}, id=shared), NewEvent("task.touched", {"i": 1}), NewEvent("task.touched", {"i": 2}, id=shared)]
    outcomes = await asyncio.gather(
        *(fresh_store.append(s, NO_STREAM, [e]) for s, e in zip(streams, events, strict=True)), return_exceptions=True
    )
    counts = fresh_store.commit_counts
    assert counts["fast_collided"] >= 1 and counts["decided_under_lock"] >= 1
    assert getattr(outcomes[0], "version", None) == 1 and getattr(outcomes[1], "version", None) == 1
    assert isinstance(outcomes[2], ValueError)
    assert [e.id for e in await fresh_store.read_stream(streams[0])] == [shared]
    assert await fresh_store.read_stream(streams[2]) == []


async def test_an_event_id_already_in_the_table_is_refused_without_failing_the_batch(fresh_store: PostgresEventStore) -> None:
    taken = NewEvent("task.touched", {})
    await fresh_store.append(f"task-{uuid.uuid4()}", NO_STREAM, [taken])
    before = fresh_store.commit_counts["fast_collided"]
    good = NewEvent("task.touched", {})
    streams = [f"task-{uuid.uuid4()}" for _ in range(2)]
    outcomes = await asyncio.gather(
        fresh_store.append(streams[0], NO_STREAM, [NewEvent("task.touched", {}, id=taken.id)]),
        fresh_store.append(streams[1], NO_STREAM, [good]),
        return_exceptions=True,
    )
    assert fresh_store.commit_counts["fast_collided"] > before
    assert isinstance(outcomes[0], ValueError) and getattr(outcomes[1], "version", None) == 1
    assert [e.id for e in await fresh_store.read_stream(streams[1])] == [good.id]
