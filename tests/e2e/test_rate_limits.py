"""Rate limits in Redis: per principal and route class, per address and per account for logins,
the IETF RateLimit fields, a refusal counter, and the failure mode when Redis is down."""

from __future__ import annotations

import dataclasses
import random
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from taskstream.settings import Settings
from taskstream.wiring import build_gateway


def _address() -> str:
    return f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(1, 254)}"


@asynccontextmanager
async def gateway(settings: Settings, address: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway in-process, so each test can have its own client address (its own budget)."""
    app = build_gateway(settings)
    transport = httpx.ASGITransport(app=app, client=(address or _address(), 40000))
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        yield client


async def test_logins_past_the_limit_get_429_with_retry_after(gateway_settings: Settings) -> None:
    settings = dataclasses.replace(gateway_settings, auth_rate_limit_per_minute=3)
    async with gateway(settings) as client:
        body = {"email": "nobody@example.org", "password": "wrong-password"}
        answers = [await client.post("/v1/auth/token", json=body) for _ in range(3)]
        assert [a.status_code for a in answers] == [401, 401, 401]
        assert answers[0].headers["ratelimit-policy"].startswith('"credentials";q=3;w=60')
        fields = [re.fullmatch(r'"credentials";r=(\d+);t=(\d+)', a.headers["ratelimit"].split(", ")[0]) for a in answers]
        assert [int(f[1]) for f in fields if f] == [2, 1, 0]
        assert all(f and 0 < int(f[2]) <= 60 for f in fields)
        refused = await client.post("/v1/auth/token", json=body)
        assert refused.status_code == 429 and refused.headers["content-type"] == "application/problem+json"
        assert 1 <= int(refused.headers["retry-after"]) <= 20
        assert re.fullmatch(r'"credentials";r=0;t=(\d+)', refused.headers["ratelimit"])
        # Registration shares the budget: it hashes a password too.
        register = await client.post("/v1/users", json={"email": "r@example.org", "display_name": "R", "password": "password-1"})
        assert register.status_code == 429
        metrics = (await client.get("/metrics")).text
        assert 'taskstream_rate_limit_refusals_total{limit="credentials"} 2.0' in metrics


async def test_writes_are_limited_per_principal(gateway_settings: Settings, new_user) -> None:  # noqa: ANN001
    settings = dataclasses.replace(gateway_settings, rate_limit_write_per_minute=3)
    alice, bob = await new_user(), await new_user()
    async with gateway(settings) as client:
        name = f"p-{uuid.uuid4().hex[:8]}"
        answers = [await client.post("/v1/projects", json={"name": f"{name}-{i}"}, headers=alice.auth) for i in range(3)]
        assert [a.status_code for a in answers] == [201, 201, 201]
        assert [a.headers["ratelimit"] for a in answers] == ['"write";r=2;t=20', '"write";r=1;t=40', '"write";r=0;t=60']
        refused = await client.post("/v1/projects", json={"name": f"{name}-4"}, headers=alice.auth)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        # An error answer carries the fields too; bob, from the same address, has his own budget.
        invalid = await client.post("/v1/projects", json={"name": ""}, headers=bob.auth)
        assert invalid.status_code == 422 and invalid.headers["ratelimit"] == '"write";r=2;t=20'
        assert (await client.post("/v1/projects", json={"name": name}, headers=bob.auth)).status_code == 201
        metrics = (await client.get("/metrics")).text
        assert re.search(r'taskstream_rate_limit_refusals_total\{limit="write"\} 1\.0', metrics)


async def test_logins_are_limited_per_account_from_any_address(gateway_settings: Settings, new_user) -> None:  # noqa: ANN001
    settings = dataclasses.replace(gateway_settings, auth_rate_limit_per_minute=1000, auth_account_rate_limit_per_hour=2)
    carol, dave = await new_user(), await new_user()
    statuses = []
    for _ in range(3):  # a guesser spreading over addresses
        async with gateway(settings) as client:
            statuses.append((await client.post("/v1/auth/token", json={"email": carol.email, "password": "guess-guess"})).status_code)
    assert statuses == [401, 401, 429]
    async with gateway(settings) as client:
        ok = await client.post("/v1/auth/token", json={"email": dave.email, "password": dave.password})
        assert ok.status_code == 200
        assert ok.headers["ratelimit-policy"] == '"credentials";q=1000;w=60, "login-account";q=2;w=3600'


async def test_ipv6_clients_share_their_64(gateway_settings: Settings) -> None:
    settings = dataclasses.replace(gateway_settings, auth_rate_limit_per_minute=2)
    a, b = random.randint(0, 0xFFFF), random.randint(0, 0xFFFE)
    prefix = f"2001:db8:{a:x}:{b:x}"
    body = {"email": "nobody@example.org", "password": "wrong-password"}
    statuses = []
    for host in ("::1", "::2", "::3"):
        async with gateway(settings, address=f"{prefix}{host}") as client:
            statuses.append((await client.post("/v1/auth/token", json=body)).status_code)
    assert statuses == [401, 401, 429]
    async with gateway(settings, address=f"2001:db8:{a:x}:{b + 1:x}::1") as client:  # the next /64
        assert (await client.post("/v1/auth/token", json=body)).status_code == 401


async def test_without_redis_the_limiter_fails_open_by_default(gateway_settings: Settings) -> None:
    settings = dataclasses.replace(gateway_settings, auth_rate_limit_per_minute=1, redis_url="redis://127.0.0.1:1/0")
    async with gateway(settings) as client:
        body = {"email": "nobody@example.org", "password": "wrong-password"}
        answers = [await client.post("/v1/auth/token", json=body) for _ in range(3)]
        assert [a.status_code for a in answers] == [401, 401, 401]
        assert "ratelimit" not in answers[0].headers


async def test_without_redis_the_limiter_can_fail_closed(gateway_settings: Settings, new_user) -> None:  # noqa: ANN001
    user = await new_user()
    settings = dataclasses.replace(gateway_settings, redis_url="redis://127.0.0.1:1/0", rate_limit_failure_mode="closed")
    async with gateway(settings) as client:
        refused = await client.post("/v1/projects", json={"name": "closed"}, headers=user.auth)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["type"].endswith("/rate-limiter-unavailable")
        assert (await client.get("/healthz")).status_code == 200  # unlimited routes still answer
