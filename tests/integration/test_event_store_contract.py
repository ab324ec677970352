"""The EventStore contract, run against the PostgreSQL implementation on a real server.

The contract is a class so that another backend can subclass it with its own ``store`` fixture.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from event_store.errors import IdempotencyKeyReused, WrongExpectedVersion
from event_store.postgres import PostgresEventStore
from schemas.envelope import ANY, NO_STREAM, Metadata, NewEvent


def ev(n: int = 0, type_: str = "thing.happened") -> NewEvent:
    return NewEvent(type=type_, data={"n": n})


def new_stream(category: str = "task") -> str:
    return f"{category}-{uuid.uuid4()}"


class EventStoreContract:
    async def test_append_to_new_stream_starts_at_version_one(self, store: PostgresEventStore) -> None:
        stream = new_stream()
        result = await store.append(stream, NO_STREAM, [ev(1), ev(2)], Metadata(actor="user-1", correlation_id="c-1"))
        assert result.version == 2
        assert result.first_position is not None and result.last_position == result.first_position + 1
        events = await store.read_stream(stream)
        assert [(e.version, e.data["n"]) for e in events] == [(1, 1), (2, 2)]
        assert events[0].metadata == {"actor": "user-1", "correlation_id": "c-1"}
        assert events[0].stream == stream and events[0].category == "task"
        assert events[0].recorded_at.tzinfo is not None
        assert [e.global_position for e in events] == [result.first_position, result.last_position]

    async def test_exact_expected_version(self, store: PostgresEventStore) -> None:
        stream = new_stream()
        await store.append(stream, NO_STREAM, [ev(1)])
        result = await store.append(stream, 1, [ev(2)])
        assert result.version == 2
        assert await store.stream_version(stream) == 2

    async def test_wrong_expected_version_names_stream_and_both_versions(self, store: PostgresEventStore) -> None:
        stream = new_stream()
        await store.append(stream, NO_STREAM, [ev(1), ev(2)])
        with pytest.raises(WrongExpectedVersion) as info:
            await store.append(stream, 1, [ev(3)])
        assert (info.value.stream, info.value.expected, info.value.actual) == (stream, 1, 2)
        assert stream in str(info.value) and "expected 1" in str(info.value) and "version 2" in str(info.value)
        assert await store.stream_version(stream) == 2

    async def test_no_stream_refused_when_stream_exists(self, store: PostgresEventStore) -> None:
        stream = new_stream()
        await store.append(stream, NO_STREAM, [ev()])
        with pytest.raises(WrongExpectedVersion) as info:
            await store.append(stream, NO_STREAM, [ev()])
        assert info.value.actual == 1

    async def test_exact_version_refused_on_missing_stream(self, store: PostgresEventStore) -> None:
        with pytest.raises(WrongExpectedVersion) as info:
            await store.append(new_stream(), 3, [ev()])
        assert info.value.actual == 0

    async def test_any_appends_whatever_the_version(self, store: PostgresEventStore) -> None:
        stream = new_stream()
        await store.append(stream, ANY, [ev()])
        result = await store.append(stream, ANY, [ev(), ev()])
        assert result.version == 3

    async def test_read_stream_from_version_and_limit(self, store: PostgresEventStore) -> None:
        stream = new_stream()
        await store.append(stream, NO_STREAM, [ev(i) for i in range(1, 6)])
        assert [e.version for e in await store.read_stream(stream, from_version=3)] == [3, 4, 5]
        assert [e.version for e in await store.read_stream(stream, from_version=2, limit=2)] == [2, 3]
        assert await store.read_stream(new_stream()) == []

    async def test_read_all_in_global_order(self, store: PostgresEventStore) -> None:
        start = await store.head_position()
        a, b = new_stream(), new_stream("user")
        await store.append(a, NO_STREAM, [ev(1)])
        await store.append(b, NO_STREAM, [ev(2)])
        await store.append(a, 1, [ev(3)])
        seen = [e for e in await store.read_all(start, 1000) if e.stream in (a, b)]
        assert [(e.stream, e.data["n"]) for e in seen] == [(a, 1), (b, 2), (a, 3)]
        positions = [e.global_position for e in seen]
        assert positions == sorted(positions)
        limited = await store.read_all(start, limit=1)
        assert len(limited) == 1

    async def test_read_category_keeps_to_its_category_in_global_order(self, store: PostgresEventStore) -> None:
        start = await store.head_position()
        tasks, users = new_stream("task"), new_stream("user")
        await store.append(tasks, NO_STREAM, [ev(1)])
        await store.append(users, NO_STREAM, [ev(2)])
        await store.append(tasks, 1, [ev(3)])
        seen = await store.read_category("task", start)
        assert [(e.stream, e.data["n"]) for e in seen] == [(tasks, 1), (tasks, 3)]
        assert [e.data["n"] for e in await store.read_category("task", seen[0].global_position)] == [3]

    async def test_idempotent_retry_returns_original_and_appends_nothing(self, store: PostgresEventStore) -> None:
        stream, key = new_stream(), f"key-{uuid.uuid4()}"
        first = await store.append(stream, NO_STREAM, [ev(1)], idempotency_key=key)
        again = await store.append(stream, NO_STREAM, [ev(1)], idempotency_key=key)
        assert again.replayed and not first.replayed
        assert (again.version, again.first_position, again.event_ids) == (first.version, first.first_position, first.event_ids)
        assert len(await store.read_stream(stream)) == 1
        events = await store.read_stream(stream)
        assert events[0].metadata["idempotency_key"] == key

    async def test_idempotency_key_with_other_request_is_refused(self, store: PostgresEventStore) -> None:
        stream, key = new_stream(), f"key-{uuid.uuid4()}"
        await store.append(stream, NO_STREAM, [ev(1)], idempotency_key=key)
        with pytest.raises(IdempotencyKeyReused):
            await store.append(stream, NO_STREAM, [ev(2)], idempotency_key=key)
        assert len(await store.read_stream(stream)) == 1

    async def test_concurrent_same_idempotency_key_appends_once(self, store: PostgresEventStore) -> None:
        stream, key = new_stream(), f"key-{uuid.uuid4()}"
        results = await asyncio.gather(*(store.append(stream, NO_STREAM, [ev(7)], idempotency_key=key) for _ in range(8)))
        assert len({r.first_position for r in results}) == 1
        assert sum(not r.replayed for r in results) == 1
        assert len(await store.read_stream(stream)) == 1

    async def test_concurrent_appends_at_one_version_exactly_one_wins(self, store: PostgresEventStore) -> None:
        stream = new_stream()
        await store.append(stream, NO_STREAM, [ev(0)])
        outcomes = await asyncio.gather(*(store.append(stream, 1, [ev(i)]) for i in range(10)), return_exceptions=True)
        winners = [o for o in outcomes if not isinstance(o, BaseException)]
        losers = [o for o in outcomes if isinstance(o, WrongExpectedVersion)]
        assert len(winners) == 1 and len(losers) == 9
        assert await store.stream_version(stream) == 2

    async def test_a_failed_append_in_a_group_does_not_disturb_the_others(self, store: PostgresEventStore) -> None:
        streams = [new_stream() for _ in range(5)]
        bad = new_stream()
        calls = [store.append(s, NO_STREAM, [ev(i)]) for i, s in enumerate(streams)]
        calls.insert(2, store.append(bad, 5, [ev(99)]))
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(outcomes[2], WrongExpectedVersion)
        assert all(not isinstance(o, BaseException) and o.version == 1 for i, o in enumerate(outcomes) if i != 2)
        assert await store.read_stream(bad) == []

    async def test_empty_append_checks_version_and_writes_nothing(self, store: PostgresEventStore) -> None:
        stream = new_stream()
        result = await store.append(stream, NO_STREAM, [])
        assert (result.version, result.first_position) == (0, None)
        with pytest.raises(WrongExpectedVersion):
            await store.append(stream, 2, [])

    async def test_malformed_stream_name_is_refused(self, store: PostgresEventStore) -> None:
        with pytest.raises(ValueError, match="category"):
            await store.append("nodash", ANY, [ev()])


class TestPostgresEventStore(EventStoreContract):
    async def test_events_table_is_append_only(self, store: PostgresEventStore, owner_database_url: str) -> None:
        """Even for the owner, who may UPDATE and DELETE, the trigger refuses (the app role may
        not even try: tests/integration/test_least_privilege.py)."""
        import psycopg

        stream = new_stream()
        await store.append(stream, NO_STREAM, [ev()])
        async with await psycopg.AsyncConnection.connect(owner_database_url) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                await conn.execute("UPDATE events SET type = 'x' WHERE stream_id = %s", (stream,))
            await conn.rollback()
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                await conn.execute("DELETE FROM events WHERE stream_id = %s", (stream,))
            await conn.rollback()
        assert len(await store.read_stream(stream)) == 1

    async def test_subscription_sees_new_events_promptly(self, store: PostgresEventStore) -> None:
        start = await store.head_position()
        stream = new_stream()
        received: list[int] = []

        async def tail() -> None:
            async for batch in store.subscribe(start, poll_interval=30):
                received.extend(e.data["n"] for e in batch if e.stream == stream)
                if len(received) >= 3:
                    return

        task = asyncio.create_task(tail())
        await asyncio.sleep(0.2)
        for i in range(3):
            await store.append(stream, ANY, [ev(i)])
        # poll_interval is 30 s: finishing within 10 s shows LISTEN/NOTIFY woke the reader.
        await asyncio.wait_for(task, timeout=10)
        assert received == [0, 1, 2]


class TestMultiStreamAppends:
    async def test_all_parts_commit_together(self, store: PostgresEventStore) -> None:
        from event_store.protocol import StreamAppend

        a, b = new_stream("project"), new_stream("project_name")
        results = await store.append_streams([StreamAppend(a, NO_STREAM, [ev(1)]), StreamAppend(b, NO_STREAM, [ev(2)])])
        assert [(r.stream, r.version) for r in results] == [(a, 1), (b, 1)]
        assert results[1].first_position == results[0].last_position + 1  # type: ignore[operator]

    async def test_one_failing_part_writes_nothing(self, store: PostgresEventStore) -> None:
        from event_store.protocol import StreamAppend

        taken = new_stream("project_name")
        await store.append(taken, NO_STREAM, [ev()])
        fresh = new_stream("project")
        with pytest.raises(WrongExpectedVersion) as info:
            await store.append_streams([StreamAppend(fresh, NO_STREAM, [ev()]), StreamAppend(taken, NO_STREAM, [ev()])])
        assert info.value.stream == taken
        assert await store.read_stream(fresh) == []
        assert await store.stream_version(taken) == 1

    async def test_idempotent_result_lookup(self, store: PostgresEventStore) -> None:
        from event_store.protocol import StreamAppend

        key = f"key-{uuid.uuid4()}"
        parts = [StreamAppend(new_stream(), NO_STREAM, [ev(1)]), StreamAppend(new_stream(), NO_STREAM, [ev(2)])]
        assert await store.idempotent_result(key, "fp") is None
        original = await store.append_streams(parts, idempotency_key=key, fingerprint="fp")
        replayed = await store.idempotent_result(key, "fp")
        assert replayed is not None and all(r.replayed for r in replayed)
        assert [(r.stream, r.version, r.first_position) for r in replayed] == [(r.stream, r.version, r.first_position) for r in original]
        with pytest.raises(IdempotencyKeyReused):
            await store.idempotent_result(key, "other")


class TestRefusedData:
    async def test_unstorable_data_is_refused_for_that_append_alone(self, store: PostgresEventStore) -> None:
        good = [new_stream() for _ in range(3)]
        bad = [
            store.append(new_stream(), NO_STREAM, [NewEvent("x", {"text": "nul \x00 here"})]),
            store.append(new_stream(), NO_STREAM, [NewEvent("x", {"n": float("nan")})]),
            store.append(new_stream(), NO_STREAM, [NewEvent("x", {"id": uuid.uuid4()})]),
            store.append(new_stream(), True, [ev()]),  # type: ignore[arg-type]
            store.append("Task-1", NO_STREAM, [ev()]),
        ]
        outcomes = await asyncio.gather(*bad, *(store.append(s, NO_STREAM, [ev()]) for s in good), return_exceptions=True)
        assert all(isinstance(o, ValueError) for o in outcomes[: len(bad)])
        assert all(not isinstance(o, BaseException) and o.version == 1 for o in outcomes[len(bad) :])
        # A backslash and the text "u0000" is fine; only a real NUL is refused.
        result = await store.append(new_stream(), NO_STREAM, [NewEvent("x", {"text": "\\u0000"})])
        assert result.version == 1

    async def test_a_key_used_for_a_write_that_changed_nothing_is_kept(self, store: PostgresEventStore) -> None:
        stream, key = new_stream(), f"key-{uuid.uuid4()}"
        await store.append(stream, NO_STREAM, [ev()])
        first = await store.append(stream, 1, [], idempotency_key=key, fingerprint="a")
        assert (first.version, first.first_position) == (1, None)
        again = await store.append(stream, 1, [], idempotency_key=key, fingerprint="a")
        assert again.replayed
        with pytest.raises(IdempotencyKeyReused):
            await store.append(stream, 1, [ev()], idempotency_key=key, fingerprint="b")
