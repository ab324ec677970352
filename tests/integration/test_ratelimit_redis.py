"""The GCRA limiter against a real Redis-compatible server: batched checks stay exact."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from gateway.ratelimit import Decision, LimiterUnavailable, Policy, RateLimited, RedisRateLimiter


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def _outcome(limiter: RedisRateLimiter, policy: Policy, who: str) -> Decision | RateLimited | None:
    try:
        return await limiter.check(policy, who)
    except RateLimited as refused:
        return refused


async def test_concurrent_checks_admit_exactly_the_quota(redis: Redis) -> None:
    limiter, policy, who = RedisRateLimiter(redis), Policy("t", 10, 60), uuid.uuid4().hex
    outcomes = await asyncio.gather(*(_outcome(limiter, policy, who) for _ in range(50)))  # sent as batches
    admitted = [o for o in outcomes if isinstance(o, Decision)]
    assert sorted(d.remaining for d in admitted) == list(range(10))
    refused = [o for o in outcomes if isinstance(o, RateLimited)]
    assert len(refused) == 40 and all(1 <= r.retry_after <= 6 for r in refused)
    other = await limiter.check(policy, uuid.uuid4().hex)  # another caller: its own budget
    assert other is not None and other.remaining == 9


async def test_the_script_is_loaded_again_after_a_flush(redis: Redis) -> None:
    limiter, policy = RedisRateLimiter(redis), Policy("t", 5, 60)
    assert await limiter.check(policy, uuid.uuid4().hex) is not None
    await redis.script_flush()
    decision = await limiter.check(policy, uuid.uuid4().hex)
    assert decision is not None and decision.remaining == 4


async def test_an_unreachable_redis_fails_open_or_closed_as_configured() -> None:
    down = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    try:
        assert await RedisRateLimiter(down).check(Policy("t", 1, 60), "x") is None
        with pytest.raises(LimiterUnavailable):
            await RedisRateLimiter(down, failure_mode="closed").check(Policy("t", 1, 60), "x")
    finally:
        await down.aclose()
