"""Webhook endpoints of a project (``webhook_endpoints``) and their delivery log.

Registration checks the URL with the SSRF guard (the sender checks it again before every
delivery). A secret is shown once, when the endpoint is created or rotated; after a rotation
the previous secret keeps signing for the grace period. Who may do what is the caller's
check (project owners manage endpoints).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg_pool import AsyncConnectionPool

from commands.errors import Forbidden, NotFound, ValidationFailed
from schemas.tasks import TASK_EVENTS
from workers.ssrf import Resolver, UnsafeDestination, check_url, system_resolver
from workers.webhooks.signing import new_secret

EVENT_TYPES = frozenset(cls.TYPE for cls in TASK_EVENTS)
_COLUMNS = "endpoint_id, project_id, url, event_types, created_at, rotated_at, disabled_at, disabled_reason, failures_in_row"


def _public(row: Sequence[Any]) -> dict[str, Any]:
    endpoint_id, project_id, url, types, created, rotated, disabled_at, reason, failures = row
    return {
        "id": str(endpoint_id), "project_id": str(project_id), "url": url, "event_types": list(types),
        "created_at": created.isoformat(), "rotated_at": rotated.isoformat() if rotated else None,
        "enabled": disabled_at is None, "disabled_at": disabled_at.isoformat() if disabled_at else None,
        "disabled_reason": reason, "failures_in_row": failures,
    }  # fmt: skip


class DestinationRefused(Forbidden):
    """A well-formed URL whose destination the SSRF guard refuses (loopback, private, metadata...):
    a policy, not a malformed request, so 403 rather than 422."""

    slug = "webhook-destination-refused"
    title = "This destination may not receive webhooks"

    def __init__(self, reason: str) -> None:
        super().__init__(f"this URL may not receive webhooks: {reason}", errors=[{"field": "url", "message": reason}])


@dataclass
class WebhookEndpoints:
    pool: AsyncConnectionPool
    allow_loopback: bool = False
    grace_seconds: int = 86_400
    resolve: Resolver = system_resolver

    async def register(self, project_id: uuid.UUID, url: str, event_types: Sequence[str], created_by: str) -> dict[str, Any]:
        types = sorted(set(event_types))
        unknown = [t for t in types if t != "*" and t not in EVENT_TYPES]
        if not types or unknown:
            message = f"event types must be some of {', '.join(sorted(EVENT_TYPES))} or *" + (f"; unknown: {', '.join(unknown)}" if unknown else "")
            raise ValidationFailed(message, errors=[{"field": "event_types", "message": message}])
        try:
            await check_url(url, allow_loopback=self.allow_loopback, resolve=self.resolve)
        except UnsafeDestination as exc:
            raise DestinationRefused(str(exc)) from None
        endpoint_id, secret = uuid.uuid4(), new_secret()
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"INSERT INTO webhook_endpoints (endpoint_id, project_id, url, event_types, secret, created_by)"
                f" VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
                (endpoint_id, project_id, url, types, secret, created_by),
            )
            row = await cur.fetchone()
        assert row is not None
        return {**_public(row), "secret": secret}

    async def list(self, project_id: uuid.UUID) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM webhook_endpoints WHERE project_id = %s AND deleted_at IS NULL ORDER BY created_at",
                (project_id,),
            )
            return [_public(row) for row in await cur.fetchall()]

    async def delete(self, project_id: uuid.UUID, endpoint_id: uuid.UUID) -> None:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE webhook_endpoints SET deleted_at = now() WHERE endpoint_id = %s AND project_id = %s AND deleted_at IS NULL"
                " RETURNING 1",
                (endpoint_id, project_id),
            )
            if await cur.fetchone() is None:
                raise NotFound("no such webhook endpoint")

    async def rotate(self, project_id: uuid.UUID, endpoint_id: uuid.UUID) -> dict[str, Any]:
        """A new secret; the old one keeps signing for the grace period. Re-enables a
        disabled endpoint (rotating is what a project does after fixing its receiver)."""
        secret = new_secret()
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"UPDATE webhook_endpoints SET previous_secret = secret, previous_until = now() + make_interval(secs => %s),"
                f" secret = %s, rotated_at = now(), disabled_at = NULL, disabled_reason = NULL, failures_in_row = 0"
                f" WHERE endpoint_id = %s AND project_id = %s AND deleted_at IS NULL RETURNING {_COLUMNS}",
                (self.grace_seconds, secret, endpoint_id, project_id),
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound("no such webhook endpoint")
        return {**_public(row), "secret": secret}

    async def deliveries(self, project_id: uuid.UUID, endpoint_id: uuid.UUID, limit: int = 100) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT 1 FROM webhook_endpoints WHERE endpoint_id = %s AND project_id = %s AND deleted_at IS NULL",
                (endpoint_id, project_id),
            )
            if await cur.fetchone() is None:
                raise NotFound("no such webhook endpoint")
            cur = await conn.execute(
                "SELECT a.delivery_id, d.event_id, d.event_type, a.attempt, a.attempted_at, a.status_code, a.error,"
                " a.duration_ms, d.status FROM webhook_attempts a JOIN webhook_deliveries d USING (delivery_id)"
                " WHERE a.endpoint_id = %s ORDER BY a.attempted_at DESC, a.attempt DESC LIMIT %s",
                (endpoint_id, limit),
            )
            rows = await cur.fetchall()
        return [
            {
                "delivery_id": str(d), "event_id": str(e), "event_type": t, "attempt": n, "attempted_at": at.isoformat(),
                "status_code": code, "error": err, "duration_ms": ms, "delivery_status": status,
            }  # fmt: skip
            for d, e, t, n, at, code, err, ms, status in rows
        ]
