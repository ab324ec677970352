"""A stuck append lock seen through HTTP: a 503 with Retry-After, not a request that hangs."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import httpx
import psycopg

from gateway.auth import TokenIssuer
from taskstream import embedded
from taskstream.settings import Settings
from tests.e2e.conftest import served
from tests.integration.test_store_faults import STUCK_INSERT


async def test_a_stuck_append_lock_answers_503_with_retry_after(gateway_settings: Settings, issuer: TokenIssuer, database_url: str) -> None:
    settings = dataclasses.replace(gateway_settings, http_port=embedded.free_port(), db_lock_timeout_ms=300)
    async with served(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        token = issuer.issue(str(uuid.uuid4()), "member")
        headers = {"Authorization": f"Bearer {token}"}
        async with await psycopg.AsyncConnection.connect(database_url) as stuck:
            await stuck.execute(STUCK_INSERT, (f"stuck-{uuid.uuid4()}", uuid.uuid4()))
            response = await asyncio.wait_for(client.post("/v1/projects", json={"name": "blocked"}, headers=headers), 8)
            await stuck.rollback()
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "1"
        assert response.headers["content-type"] == "application/problem+json"
        response = await client.post("/v1/projects", json={"name": "unblocked"}, headers=headers)
        assert response.status_code == 201, response.text
