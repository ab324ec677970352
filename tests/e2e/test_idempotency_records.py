"""Idempotency records through HTTP: no secret in the stored fingerprint, and expiry."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import uuid

import httpx
import psycopg

from commands.fingerprints import request_fingerprint
from taskstream import embedded
from taskstream.settings import Settings
from taskstream.wiring import fingerprint_key
from tests.support.stack import serve_gateway as served


async def _stored(database_url: str, key_suffix: str) -> tuple[str, str]:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT key, fingerprint FROM idempotency_keys WHERE key LIKE %s", (f"%:{key_suffix}",))
        row = await cur.fetchone()
    assert row is not None
    return row[0], row[1]


async def test_a_registration_fingerprint_is_keyed_and_leaves_the_password_out(
    client: httpx.AsyncClient, gateway_settings: Settings, database_url: str
) -> None:
    key = f"reg-{uuid.uuid4()}"
    raw = json.dumps({"email": f"u{uuid.uuid4().hex[:10]}@example.org", "display_name": "U", "password": "hunter2-hunter2"})
    headers = {"Idempotency-Key": key, "Content-Type": "application/json"}
    first = await client.post("/v1/users", content=raw, headers=headers)
    assert first.status_code == 201, first.text
    _, fingerprint = await _stored(database_url, key)
    assert fingerprint == request_fingerprint(fingerprint_key(gateway_settings), "POST", "/v1/users", "", raw.encode())
    assert fingerprint != hashlib.sha256(raw.encode()).hexdigest()
    # The password is not part of it: the retry with another one replays the original answer.
    again = await client.post("/v1/users", content=raw.replace("hunter2-hunter2", "other-password"), headers=headers)
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]


async def test_records_past_the_retention_period_are_deleted_by_the_gateway_itself(
    gateway_settings: Settings, database_url: str
) -> None:
    settings = dataclasses.replace(
        gateway_settings, http_port=embedded.free_port(), idempotency_retention_hours=1.0, idempotency_cleanup_interval_seconds=0.2
    )
    old, fresh = f"old-{uuid.uuid4()}", f"fresh-{uuid.uuid4()}"
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        for key, age in ((old, "2 hours"), (fresh, "10 minutes")):
            await conn.execute(
                "INSERT INTO idempotency_keys (key, fingerprint, stream_id, result, created_at)"
                " VALUES (%s, 'f', 'task-x', '{\"parts\": []}', now() - %s::interval)",
                (key, age),
            )
        async with served(settings):
            async with asyncio.timeout(10):
                while True:
                    cur = await conn.execute("SELECT key FROM idempotency_keys WHERE key IN (%s, %s)", (old, fresh))
                    if {row[0] for row in await cur.fetchall()} == {fresh}:
                        break
                    await asyncio.sleep(0.1)
