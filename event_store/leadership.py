"""One relay at a time: leadership through a PostgreSQL session advisory lock.

Two relays publishing the same table at once would interleave two republished ranges in one
partition, and per-stream order after deduplication would break (see event_store/relay.py).
So a relay publishes only while it holds ``pg_advisory_lock(RELAY_LOCK_KEY, <name hash>)`` on a
connection of its own. A second relay tries for the lock every ``retry_interval`` seconds and
waits; when the first one dies its connection closes, PostgreSQL releases the lock at once, and
the second takes over from the checkpoint.

Losing the lock: the holder checks its connection every ``check_interval`` seconds (and TCP
keepalives bound how long the server keeps a dead client's session). When the check fails the
holder stops publishing before another relay can have been granted the lock, except when the
server ends the session while the holder is still sending (a network partition, not a crash):
then the two may overlap by at most the batch in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable

import psycopg

log = logging.getLogger("taskstream.leadership")

RELAY_LOCK_CLASS = 7306  # first key of the two-key advisory lock; the second is the name's hash
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3}


def lock_key(name: str) -> int:
    return zlib.crc32(name.encode()) - 2**31  # an int4, as the two-key form wants


class Lease:
    """Held leadership: ``lost`` is set when the lock can no longer be vouched for."""

    def __init__(self, conn: psycopg.AsyncConnection) -> None:
        self.lost = asyncio.Event()
        self._conn = conn

    async def check(self) -> None:
        """Raise unless the session holding the lock is alive (so the lock is still held):
        the relay calls it before each batch it sends."""
        if self.lost.is_set():
            raise LeadershipLost("the leader lock was lost")
        try:
            await self._conn.execute("SELECT 1")
        except psycopg.Error as exc:
            self.lost.set()
            raise LeadershipLost(f"the leader lock's connection failed: {type(exc).__name__}") from exc


class LeadershipLost(Exception):
    """This process can no longer be sure it is the only relay."""


@contextlib.asynccontextmanager
async def leadership(
    database_url: str,
    name: str,
    *,
    retry_interval: float = 1.0,
    check_interval: float = 1.0,
    on_wait: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[Lease]:
    """Wait until this process holds the lock named ``name``; yield a Lease while it does.
    Connection failures while waiting are retried; the caller cancels to give up."""
    key = lock_key(name)
    conn = await _acquire(database_url, key, retry_interval, on_wait)
    lease = Lease(conn)
    watch = asyncio.create_task(_watch(conn, lease, check_interval))
    try:
        yield lease
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        with contextlib.suppress(Exception):
            await conn.execute("SELECT pg_advisory_unlock(%s, %s)", (RELAY_LOCK_CLASS, key))
        with contextlib.suppress(Exception):
            await conn.close()


async def _acquire(
    database_url: str, key: int, retry_interval: float, on_wait: Callable[[], Awaitable[None]] | None
) -> psycopg.AsyncConnection:
    announced = False
    while True:
        conn: psycopg.AsyncConnection | None = None
        try:
            conn = await psycopg.AsyncConnection.connect(
                database_url, autocommit=True, application_name="taskstream-relay-leader", **_KEEPALIVES
            )
            while True:
                cur = await conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (RELAY_LOCK_CLASS, key))
                row = await cur.fetchone()
                if row and row[0]:
                    log.info("relay: leadership acquired")
                    return conn
                if not announced:
                    log.info("relay: another relay holds the lock; waiting to take over")
                    announced = True
                if on_wait is not None:
                    await on_wait()
                await asyncio.sleep(retry_interval)
        except psycopg.Error as exc:
            log.warning("relay: cannot reach the database for the leader lock: %r", exc)
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
            await asyncio.sleep(retry_interval)
        except BaseException:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
            raise


async def _watch(conn: psycopg.AsyncConnection, lease: Lease, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.wait_for(conn.execute("SELECT 1"), timeout=max(interval, 1.0))
        except (psycopg.Error, asyncio.TimeoutError) as exc:
            log.error("relay: lost the connection that holds the leader lock (%r); stopping", exc)
            lease.lost.set()
            return
