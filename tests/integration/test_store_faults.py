"""The store when the database misbehaves: a stuck append lock, a connection lost mid-commit."""

from __future__ import annotations

import asyncio
import json
import uuid
from urllib.parse import urlparse

import psycopg
import pytest

from event_store.errors import StoreUnavailable
from event_store.postgres import PostgresEventStore
from schemas.envelope import ANY, NO_STREAM, NewEvent
from tests.support.pgproxy import PgProxy

STUCK_INSERT = "INSERT INTO events (stream_id, version, event_id, type, data) VALUES (%s, 1, %s, 'stuck', '{}')"


async def test_a_session_holding_the_append_lock_makes_appends_fail_fast_not_hang(database_url: str) -> None:
    """A forgotten ``BEGIN; INSERT INTO events ...``: appends give up after the lock timeout."""
    store = await PostgresEventStore.connect(database_url, lock_timeout_ms=300, statement_timeout_ms=2_000)
    try:
        async with await psycopg.AsyncConnection.connect(database_url) as stuck:
            await stuck.execute(STUCK_INSERT, (f"stuck-{uuid.uuid4()}", uuid.uuid4()))  # holds the lock, never commits
            for expected in (NO_STREAM, ANY):  # the fast path and taskstream_append
                with pytest.raises(StoreUnavailable):
                    await asyncio.wait_for(store.append(f"task-{uuid.uuid4()}", expected, [NewEvent("x", {})]), 10)
            await stuck.rollback()
        result = await store.append(f"task-{uuid.uuid4()}", NO_STREAM, [NewEvent("x", {})])  # and it recovers
        assert result.version == 1
    finally:
        await store.close()


@pytest.fixture
async def proxied(database_url: str):  # noqa: ANN201 - (proxy, store)
    parsed = urlparse(database_url)
    proxy = await PgProxy.start(parsed.hostname or "127.0.0.1", parsed.port or 5432)
    store = await PostgresEventStore.connect(proxy.url(database_url), min_size=2, max_size=4)
    try:
        yield proxy, store
    finally:
        await store.close()
        await proxy.close()


@pytest.mark.parametrize("expected", [NO_STREAM, ANY], ids=["fast-path", "taskstream_append"])
async def test_a_commit_whose_answer_was_lost_is_answered_as_written(proxied, expected: str) -> None:  # noqa: ANN001
    proxy, store = proxied
    stream, event = f"task-{uuid.uuid4()}", NewEvent("task.submitted", {"n": 1})
    proxy.drop_reply(str(event.id).encode())
    result = await store.append(stream, expected, [event])
    assert proxy.broken == 1 and store.commit_counts["ambiguous"] == 1
    events = await store.read_stream(stream)
    assert [e.id for e in events] == [event.id]  # written once
    assert (result.version, result.event_ids, result.last_position) == (1, (event.id,), events[0].global_position)


@pytest.mark.parametrize("expected", [NO_STREAM, ANY], ids=["fast-path", "taskstream_append"])
async def test_a_statement_that_never_arrived_is_sent_again(proxied, expected: str) -> None:  # noqa: ANN001
    proxy, store = proxied
    stream, event = f"task-{uuid.uuid4()}", NewEvent("task.submitted", {"n": 1})
    proxy.cut_request(str(event.id).encode())
    result = await store.append(stream, expected, [event])
    assert proxy.broken == 1 and store.commit_counts["ambiguous"] == 1
    assert [e.id for e in await store.read_stream(stream)] == [event.id]
    assert result.version == 1


async def test_in_a_batch_only_the_unwritten_appends_go_again(proxied) -> None:  # noqa: ANN001
    """One group commit, the answer lost: the appends written are answered from the table; the
    one refused inside the same transaction (wrong version) is decided again, exactly."""
    proxy, store = proxied
    taken = f"task-{uuid.uuid4()}"
    await store.append(taken, NO_STREAM, [NewEvent("seed", {})])
    good = [NewEvent("task.submitted", {"i": i}) for i in range(3)]
    streams = [f"task-{uuid.uuid4()}" for _ in good]
    proxy.drop_reply(str(good[0].id).encode())
    outcomes = await asyncio.gather(
        *(store.append(s, ANY, [e]) for s, e in zip(streams, good, strict=True)),
        store.append(taken, NO_STREAM, [NewEvent("late", {})]),
        return_exceptions=True,
    )
    assert proxy.broken == 1
    assert [getattr(o, "version", o) for o in outcomes[:3]] == [1, 1, 1]
    assert type(outcomes[3]).__name__ == "WrongExpectedVersion" and outcomes[3].actual == 1  # type: ignore[union-attr]
    for stream, event in zip(streams, good, strict=True):
        assert [e.id for e in await store.read_stream(stream)] == [event.id]
    assert json.dumps([e.type for e in await store.read_stream(taken)]) == '["seed"]'
