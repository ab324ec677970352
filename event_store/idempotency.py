"""Expiry of idempotency records: kept at least the retention period, then deleted.

A key answers retries for ``retention`` (default 24 h); after that it is deleted by
``expire_once``, which ``keep_expiring`` runs every ``interval`` seconds in each gateway. Several
gateways may run it: a transaction-level advisory try-lock lets one of them work at a time,
and deletes go in bounded chunks so no statement holds many row locks for long. A key is
therefore kept between ``retention`` and ``retention + interval``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

import psycopg
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger("taskstream.idempotency")

CLEANUP_LOCK_KEY = 7_306_010_005
_DELETE_CHUNK = """
WITH doomed AS (
    SELECT key FROM idempotency_keys WHERE created_at < now() - %(retention)s ORDER BY created_at LIMIT %(chunk)s
)
DELETE FROM idempotency_keys k USING doomed WHERE k.key = doomed.key
"""


async def expire_once(pool: AsyncConnectionPool, retention: timedelta, chunk: int = 5_000) -> int:
    """Delete the records older than ``retention``; return how many (0 if another process
    is doing it now)."""
    deleted = 0
    while True:
        async with pool.connection() as conn, conn.transaction():
            cur = await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (CLEANUP_LOCK_KEY,))
            row = await cur.fetchone()
            if not (row and row[0]):
                return deleted
            cur = await conn.execute(_DELETE_CHUNK, {"retention": retention, "chunk": chunk})
            deleted += cur.rowcount
            if cur.rowcount < chunk:
                return deleted


async def keep_expiring(pool: AsyncConnectionPool, retention: timedelta, interval: float) -> None:
    """Run ``expire_once`` now and every ``interval`` seconds, until cancelled; failures
    (the database away) are logged and tried again next time."""
    while True:
        try:
            if count := await expire_once(pool, retention):
                log.info("deleted %d idempotency records older than %s", count, retention)
        except (psycopg.Error, OSError) as exc:
            log.warning("idempotency cleanup failed, trying again in %.0f s: %r", interval, exc)
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def expiring(pool: AsyncConnectionPool, retention: timedelta, interval: float):  # noqa: ANN201
    """The cleanup as a background task for the lifetime of the block."""
    task = asyncio.create_task(keep_expiring(pool, retention, interval), name="idempotency-expiry")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
