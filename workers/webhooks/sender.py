"""The webhook sender: an outbox in PostgreSQL, delivered with retries over hours.

``enqueue`` runs in the log consumer, after the batch's tasks are in ``worker_tasks``: one
``webhook_deliveries`` row per (endpoint, event) that the endpoint subscribed to, unique, so a
redelivered event enqueues nothing twice. ``run`` claims due deliveries (SKIP LOCKED, with a
claim lease so a crashed sender's deliveries come due again), checks the URL with the SSRF
guard again (DNS may have changed), signs per Standard Webhooks and POSTs without following
redirects. Every attempt is logged; a 2xx delivers; anything else is retried on the Standard
Webhooks schedule (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, jittered) and the delivery fails
after the last. ``webhook_disable_after`` failed attempts in a row disable the endpoint, with
the reason shown to the project; a rotation re-enables it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

import httpx
from psycopg_pool import AsyncConnectionPool

from schemas.envelope import RecordedEvent
from workers.backoff import webhook_delay
from workers.ssrf import Resolver, UnsafeDestination, check_url, system_resolver
from workers.webhooks import signing

log = logging.getLogger("taskstream.webhooks")

CLAIM_SECONDS = 120


def body_of(event: RecordedEvent) -> str:
    data = {**event.data, "stream": event.stream, "version": event.version, "event_id": str(event.id)}
    return json.dumps({"type": event.type, "timestamp": event.recorded_at.isoformat(), "data": data}, separators=(",", ":"))


class WebhookSender:
    def __init__(self, pool: AsyncConnectionPool, settings: Any, metrics: Any = None, *, resolve: Resolver = system_resolver) -> None:
        self._pool, self._settings, self._metrics, self._resolve = pool, settings, metrics, resolve
        self._wake = asyncio.Event()

    async def enqueue(self, events: Sequence[RecordedEvent]) -> None:
        task_events = [e for e in events if e.category == "task"]
        if not task_events:
            return
        async with self._pool.connection() as conn:
            # First which events any endpoint wants (ids and types only): most events have no
            # subscriber, and encoding every body into the statement cost the worker more CPU
            # than anything else it does per task. The INSERT below joins the endpoints again.
            cur = await conn.execute(
                """
                SELECT x.i FROM unnest(%s::uuid[], %s::text[]) WITH ORDINALITY AS x(task_id, type, i)
                 WHERE EXISTS (SELECT 1 FROM worker_tasks t
                                 JOIN webhook_endpoints w ON w.project_id = t.project_id AND w.deleted_at IS NULL AND w.disabled_at IS NULL
                                                         AND (x.type = ANY(w.event_types) OR '*' = ANY(w.event_types))
                                WHERE t.task_id = x.task_id)
                """,
                ([uuid.UUID(str(e.data["task_id"])) for e in task_events], [e.type for e in task_events]),
            )
            task_events = [task_events[i - 1] for (i,) in await cur.fetchall()]
            if not task_events:
                return
            cur = await conn.execute(
                """
                INSERT INTO webhook_deliveries (delivery_id, endpoint_id, event_id, event_type, body, status, next_attempt_at)
                SELECT gen_random_uuid(), w.endpoint_id, x.event_id, x.type, x.body, 'pending', now()
                  FROM unnest(%s::uuid[], %s::uuid[], %s::text[], %s::text[]) AS x(event_id, task_id, type, body)
                  JOIN worker_tasks t ON t.task_id = x.task_id
                  JOIN webhook_endpoints w ON w.project_id = t.project_id AND w.deleted_at IS NULL AND w.disabled_at IS NULL
                                          AND (x.type = ANY(w.event_types) OR '*' = ANY(w.event_types))
                ON CONFLICT (endpoint_id, event_id) DO NOTHING
                RETURNING 1
                """,
                (
                    [e.id for e in task_events],
                    [uuid.UUID(str(e.data["task_id"])) for e in task_events],
                    [e.type for e in task_events],
                    [body_of(e) for e in task_events],
                ),
            )
            if await cur.fetchall():
                self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=self._settings.webhook_timeout_seconds, follow_redirects=False, trust_env=False) as client:
            while not stop.is_set():
                self._wake.clear()
                try:
                    claimed = await self._claim(20)
                    await asyncio.gather(*(self._deliver(client, d) for d in claimed))
                except Exception as exc:  # noqa: BLE001 - claims come due again; keep going
                    log.warning("webhook sender: %r", exc)
                    claimed = []
                if claimed:
                    continue
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(_first(stop, self._wake), 0.5)

    async def _claim(self, limit: int) -> list[tuple[Any, ...]]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                """
                UPDATE webhook_deliveries d SET next_attempt_at = now() + make_interval(secs => %s)
                  FROM (SELECT delivery_id FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= now()
                         ORDER BY next_attempt_at LIMIT %s FOR UPDATE SKIP LOCKED) c,
                       webhook_endpoints w
                 WHERE d.delivery_id = c.delivery_id AND w.endpoint_id = d.endpoint_id
                RETURNING d.delivery_id, d.endpoint_id, d.event_id, d.body, d.attempts, w.url, w.secret, w.previous_secret,
                          w.previous_until > now(), w.deleted_at IS NOT NULL OR w.disabled_at IS NOT NULL
                """,
                (CLAIM_SECONDS, limit),
            )
            return list(await cur.fetchall())

    async def _deliver(self, client: httpx.AsyncClient, row: tuple[Any, ...]) -> None:
        delivery_id, endpoint_id, event_id, body, attempts, url, secret, previous, previous_valid, inactive = row
        if inactive:
            await self._close(delivery_id, "failed")
            return
        attempt = attempts + 1
        started = time.perf_counter()
        status_code: int | None = None
        error: str | None = None
        try:
            await check_url(url, allow_loopback=self._settings.webhook_allow_loopback, resolve=self._resolve)
            keys = [secret, *([previous] if previous and previous_valid else [])]
            headers = signing.headers(keys, f"msg_{uuid.UUID(str(event_id)).hex}", int(time.time()), body)
            response = await client.post(url, content=body.encode(), headers=headers)
            status_code = response.status_code
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
        except UnsafeDestination as exc:
            error = f"refused: {exc}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        duration_ms = int((time.perf_counter() - started) * 1000)
        await self._record(delivery_id, endpoint_id, attempt, status_code, error, duration_ms)
        if self._metrics is not None:
            self._metrics.outcomes.labels("delivered" if error is None else "failed").inc()

    async def _record(self, delivery_id: Any, endpoint_id: Any, attempt: int, status_code: int | None, error: str | None, duration_ms: int) -> None:
        delay = None if error is None else webhook_delay(attempt, self._settings.webhook_backoff_scale)
        status = "delivered" if error is None else ("pending" if delay is not None else "failed")
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO webhook_attempts (delivery_id, attempt, endpoint_id, status_code, error, duration_ms)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (delivery_id, attempt, endpoint_id, status_code, error, duration_ms),
            )
            await conn.execute(
                "UPDATE webhook_deliveries SET attempts = %s, status = %s,"
                " next_attempt_at = now() + make_interval(secs => %s), finished_at = CASE WHEN %s <> 'pending' THEN now() END"
                " WHERE delivery_id = %s",
                (attempt, status, delay or 0.0, status, delivery_id),
            )
            if error is None:
                await conn.execute("UPDATE webhook_endpoints SET failures_in_row = 0 WHERE endpoint_id = %s", (endpoint_id,))
            else:
                await conn.execute(
                    "UPDATE webhook_endpoints SET failures_in_row = failures_in_row + 1,"
                    " disabled_at = CASE WHEN disabled_at IS NULL AND failures_in_row + 1 >= %s THEN now() ELSE disabled_at END,"
                    " disabled_reason = CASE WHEN disabled_at IS NULL AND failures_in_row + 1 >= %s"
                    "   THEN (failures_in_row + 1) || ' delivery attempts in a row failed; the last: ' || %s ELSE disabled_reason END"
                    " WHERE endpoint_id = %s",
                    (self._settings.webhook_disable_after, self._settings.webhook_disable_after, error, endpoint_id),
                )

    async def _close(self, delivery_id: Any, status: str) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE webhook_deliveries SET status = %s, finished_at = now() WHERE delivery_id = %s", (status, delivery_id)
            )


async def _first(*events: asyncio.Event) -> None:
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
