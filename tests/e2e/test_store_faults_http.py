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
from tests.support.stack import serve_gateway as served
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


async def test_a_submission_whose_commit_answer_was_lost_is_answered_202_once(
    gateway_settings: Settings, issuer: TokenIssuer, database_url: str, new_user, new_project  # noqa: ANN001
) -> None:
    """The connection to PostgreSQL breaks after the commit of a task submission (no
    Idempotency-Key): the gateway answers 202 with the task it wrote, so the client has no
    reason to retry and create a second task."""
    from urllib.parse import urlparse

    from event_store.postgres import PostgresEventStore
    from tests.support.pgproxy import PgProxy

    owner = await new_user()
    project = await new_project(owner)
    parsed = urlparse(database_url)
    proxy = await PgProxy.start(parsed.hostname or "127.0.0.1", parsed.port or 5432)
    settings = dataclasses.replace(gateway_settings, http_port=embedded.free_port(), database_url=proxy.url(database_url))
    marker = f"lost-answer-{uuid.uuid4()}"
    try:
        async with served(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
            proxy.drop_reply(marker.encode())
            response = await client.post(f"/v1/projects/{project}/tasks", json={"kind": "k", "payload": {"m": marker}}, headers=owner.auth)
        assert proxy.broken == 1
        assert response.status_code == 202, response.text
        store = await PostgresEventStore.connect(database_url, min_size=1, max_size=1)
        try:
            events = await store.read_stream(response.json()["stream"])
        finally:
            await store.close()
        assert [e.type for e in events] == ["task.submitted"] and events[0].data["payload"] == {"m": marker}
    finally:
        await proxy.close()
