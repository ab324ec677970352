"""The read cache's batch write-through over a real Redis-compatible server: every entry
written, never an older revision over a newer one, bodies kept byte for byte."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

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
