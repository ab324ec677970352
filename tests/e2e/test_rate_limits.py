"""Registrations and logins are rate-limited per client address, in Redis, with 429 + Retry-After."""

from __future__ import annotations

import dataclasses
import random

import httpx

from taskstream.settings import Settings
from taskstream.wiring import build_gateway


async def test_logins_past_the_limit_get_429_with_retry_after(gateway_settings: Settings) -> None:
    settings = dataclasses.replace(gateway_settings, auth_rate_limit_per_minute=3)
    app = build_gateway(settings)
    # In-process ASGI calls, so each run can have its own loopback client address (own window).
    address = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(1, 254)}"
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        body = {"email": "nobody@example.org", "password": "wrong-password"}
        statuses = [(await client.post("/v1/auth/token", json=body)).status_code for _ in range(3)]
        assert statuses == [401, 401, 401]
        refused = await client.post("/v1/auth/token", json=body)
        assert refused.status_code == 429 and refused.headers["content-type"] == "application/problem+json"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        # Registration shares the budget: it hashes a password too.
        register = await client.post("/v1/users", json={"email": "r@example.org", "display_name": "R", "password": "password-1"})
        assert register.status_code == 429


async def test_without_redis_the_limiter_lets_requests_through(gateway_settings: Settings) -> None:
    settings = dataclasses.replace(gateway_settings, auth_rate_limit_per_minute=1, redis_url="redis://127.0.0.1:1/0")
    app = build_gateway(settings)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
        body = {"email": "nobody@example.org", "password": "wrong-password"}
        assert [(await client.post("/v1/auth/token", json=body)).status_code for _ in range(3)] == [401, 401, 401]
