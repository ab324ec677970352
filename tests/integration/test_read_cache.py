"""The read cache's batch write-through over a real Redis-compatible server: every entry
written, never an older revision over a newer one, bodies kept byte for byte."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from projections.cache import ReadCache, cache_key


@pytest.fixture
async def cache(redis_url: str) -> AsyncIterator[ReadCache]:
    client = Redis.from_url(redis_url)
    yield ReadCache(client, ttl_seconds=120)
    await client.aclose()


async def test_put_many_writes_every_entry_with_its_ttl(cache: ReadCache) -> None:
    run = uuid.uuid4().hex
    # More than one script call's worth, bodies with separators, digits, UTF-8 and binary bytes.
    entries = [(cache_key("tasks", f"{run}-{i}"), i + 1, f'{{"n":{i},"s":"a:b:{i}:é"}}'.encode() + bytes([i % 256]))
               for i in range(4500)]  # fmt: skip
    await cache.put_many(entries)
    for key, revision, body in entries[:10] + entries[1995:2005] + entries[-10:]:
        assert await cache.get(key) == (revision, body)
        assert 0 < await cache.redis.ttl(key) <= 120
    assert not cache.dirty


async def test_put_many_never_replaces_a_newer_or_equal_revision(cache: ReadCache) -> None:
    run = uuid.uuid4().hex
    newer, equal, older, fresh = (cache_key("tasks", f"{run}-{n}") for n in ("newer", "equal", "older", "fresh"))
    await cache.put(newer, 7, b"seven")
    await cache.put(equal, 5, b"five")
    await cache.put(older, 2, b"two")
    await cache.put_many([(newer, 6, b"six"), (equal, 5, b"other five"), (older, 3, b"three:3"), (fresh, 1, b"")])
    assert await cache.get(newer) == (7, b"seven")
    assert await cache.get(equal) == (5, b"five")
    assert await cache.get(older) == (3, b"three:3")
    assert await cache.get(fresh) == (1, b"")
    # A gateway filling a miss with what it read a moment ago loses against what the projector wrote.
    assert not await cache.put(older, 2, b"stale")
    assert await cache.get(older) == (3, b"three:3")


async def test_a_row_not_there_is_remembered_briefly_and_the_projectors_write_replaces_it(
    cache: ReadCache, store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads over PostgreSQL and Redis: a missing row is read from the database once, then
    answered from Redis (revision 0, a short TTL) until the projector writes the row; a stale
    "absent" written after the row never hides it."""
    from gateway import readmodels
    from projections.catalog import MODELS
    from projections.lag import LagMeter

    reads = readmodels.Reads(store.pool, cache, None, LagMeter(store.pool, list(MODELS.values())), absent_ttl=7)
    database_reads = 0
    real_get_row = readmodels.queries.get_row

    async def counted(*args: Any) -> Any:
        nonlocal database_reads
        database_reads += 1
        return await real_get_row(*args)

    monkeypatch.setattr(readmodels.queries, "get_row", counted)
    task_id = uuid.uuid4()
    key = cache_key("tasks", task_id)
    for _ in range(3):
        assert await reads.get("tasks", task_id) is None
    assert database_reads == 1
    assert await cache.get(key) == (0, b"")
    assert 0 < await cache.redis.ttl(key) <= 7

    # The projector commits the row and writes it through: any revision replaces "absent".
    body = b'{"id":"%s","version":1}' % str(task_id).encode()
    await cache.put_many([(key, 1, body)])
    entry = await reads.get("tasks", task_id)
    assert entry is not None and (entry.revision, entry.body) == (1, body)
    assert not await cache.put(key, 0, b"", ttl_seconds=7)  # a gateway's late "absent" loses
    assert await cache.get(key) == (1, body) and await cache.redis.ttl(key) > 7
    assert database_reads == 1

    # Off (absent_ttl 0): nothing is remembered, each miss reads the database.
    quiet = readmodels.Reads(store.pool, cache, None, LagMeter(store.pool, list(MODELS.values())), absent_ttl=0)
    other = uuid.uuid4()
    assert await quiet.get("tasks", other) is None and await quiet.get("tasks", other) is None
    assert database_reads == 3 and await cache.get(cache_key("tasks", other)) is None
