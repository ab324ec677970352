"""Reads by id through the near-cache, Redis and PostgreSQL; consistency waits; lag.

A read by id looks in the near-cache (no network), then Redis, then PostgreSQL, filling Redis
with a version-guarded write (``projections.cache``). Concurrent misses of one key in this
process share one database read (single flight). When Redis fails, reads go to PostgreSQL for a
second before Redis is tried again, and ``taskstream_cache_requests_total{result="fallback"}``
counts them; writes never depend on Redis.

A row that is not there is remembered too, as revision 0 (``ABSENT``) for ``absent_ttl``
seconds, in Redis and the near-cache: a client polling for the task it has just submitted gets
its 404s without a database read each. The projector's write-through of the row replaces it (any
revision beats 0, and the change invalidates every near-cache), as it replaces an older row.

A read with a consistency token first waits for the read models to reach the token's versions,
then reads PostgreSQL directly: the cache is written after the projector's commit, so it may
trail the database by a moment, and such a read must not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from psycopg_pool import AsyncConnectionPool
from redis.exceptions import RedisError

from gateway.consistency import NotCaughtUp, UnknownWrites
from gateway.nearcache import NearCache
from projections import queries, views
from projections.cache import ReadCache, cache_key
from projections.lag import Lag, LagMeter

log = logging.getLogger("taskstream.reads")


@dataclass(frozen=True, slots=True)
class Entry:
    revision: int
    body: bytes
    view: dict[str, Any]
    etag: str  # views.etag of the view, made once per entry


ABSENT = Entry(0, b"", {}, "")  # no such row (when it was read): a row's revision is 1 or more


class Reads:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        cache: ReadCache | None,
        near: NearCache[Entry] | None,
        lag_meter: LagMeter,
        *,
        consistency_timeout: float = 5.0,
        absent_ttl: int = 30,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.pool = pool
        self.cache = cache
        self.near = near
        self.consistency_timeout = consistency_timeout
        self.absent_ttl = absent_ttl
        self._lag_meter = lag_meter
        self._lag: dict[str, Lag] = {}
        self._lag_at = 0.0
        self._lag_task: asyncio.Task[None] | None = None
        self._flights: dict[str, asyncio.Future[Entry | None]] = {}
        self._redis_down_until = 0.0
        self.requests = Counter(
            "taskstream_cache_requests", "Reads by id, by where they were answered", ["result"], registry=registry
        )
        self._near_hits = self.requests.labels("near_hit")  # the hot path: one child, looked up once
        self._lag_fields: dict[tuple[str, ...], tuple[dict[str, Lag], list[tuple[bytes, bytes]]]] = {}

    # --- by id -----------------------------------------------------------------------------

    async def get(self, model: str, entity_id: uuid.UUID | str, *, fresh: bool = False) -> Entry | None:
        if fresh:
            return await self._from_database(model, entity_id, cache_key(model, entity_id))
        key = cache_key(model, entity_id)
        near = self.near
        if near is not None:
            entry = near.get(key)
            if entry is not None:
                self._near_hits.inc()
                return entry if entry.revision else None
        if self._redis_usable():
            assert self.cache is not None
            if near is not None:
                near.begin_fetch(key)
            found: Entry | None = None
            try:
                got = await self.cache.get(key)
                if got is not None:
                    if got[0]:
                        view = json.loads(got[1])
                        found = Entry(got[0], got[1], view, views.etag(model, view))
                    else:
                        found = ABSENT
            except (RedisError, OSError) as exc:
                self._redis_failed(exc)
            finally:
                if near is not None:
                    near.end_fetch(key, found)
            if found is not None:
                self.requests.labels("hit").inc()
                return found if found.revision else None
            if self._redis_usable():
                self.requests.labels("miss").inc()
            else:
                self.requests.labels("fallback").inc()
        else:
            self.requests.labels("fallback").inc()
        return await self._single_flight(key, lambda: self._from_database(model, entity_id, key))

    def peek(self, model: str, entity_id: str) -> Entry | None:
        """The near-cache's entry of a row that is there; None when there is no near-cache, no
        entry, or the row is remembered as absent. Counts nothing: the caller counts what it uses."""
        if self.near is None:
            return None
        entry = self.near.get(cache_key(model, entity_id))
        return entry if entry is not None and entry.revision else None

    async def _from_database(self, model: str, entity_id: uuid.UUID | str, key: str) -> Entry | None:
        near = self.near
        if near is not None:
            near.begin_fetch(key)
        keep: Entry | None = None  # what the near-cache may hold afterwards
        try:
            row = await queries.get_row(self.pool, model, entity_id)
            if row is None:
                if self.absent_ttl > 0 and self._redis_usable():
                    assert self.cache is not None
                    try:
                        if await self.cache.put(key, 0, b"", ttl_seconds=self.absent_ttl):
                            keep = ABSENT  # else the row has been written since: keep nothing
                    except (RedisError, OSError) as exc:
                        self._redis_failed(exc)
                return None
            view = views.VIEWS[model](row)
            entry = Entry(views.revision(model, row), views.dumps(view), view, views.etag(model, view))
            if self._redis_usable():
                assert self.cache is not None
                try:
                    if await self.cache.put(key, entry.revision, entry.body):
                        keep = entry  # else Redis holds a newer revision: answer this one, keep none
                except (RedisError, OSError) as exc:
                    self._redis_failed(exc)
            return entry
        finally:
            if near is not None:
                near.end_fetch(key, keep)

    async def _single_flight(self, key: str, load: Callable[[], Awaitable[Entry | None]]) -> Entry | None:
        flight = self._flights.get(key)
        if flight is not None:
            return await asyncio.shield(flight)
        flight = asyncio.get_running_loop().create_future()
        self._flights[key] = flight
        try:
            result = await load()
        except BaseException as exc:
            flight.set_exception(exc)
            flight.exception()  # retrieved: waiters re-raise it, nobody logs "never retrieved"
            raise
        else:
            flight.set_result(result)
            return result
        finally:
            del self._flights[key]

    def _redis_usable(self) -> bool:
        return self.cache is not None and time.monotonic() >= self._redis_down_until

    def _redis_failed(self, exc: BaseException) -> None:
        if time.monotonic() >= self._redis_down_until:
            log.warning("read cache: Redis failed, reading PostgreSQL for a second: %r", exc)
        self._redis_down_until = time.monotonic() + 1.0

    # --- read-your-writes ------------------------------------------------------------------

    async def wait_for(self, required: Mapping[str, int]) -> None:
        """Until the read models reflect ``required`` (stream -> version); NotCaughtUp after
        the configured time."""
        started = time.monotonic()
        delay = 0.005
        checked = False
        while True:
            reached = await queries.stream_versions(self.pool, list(required))
            behind = queries.models_behind(required, reached)
            if not behind:
                return
            if not checked:  # a token naming writes that never happened can never be reached
                checked = True
                written = await queries.written_versions(self.pool, behind)
                never = [s for s in behind if written.get(s, 0) < required[s]]
                if never:
                    raise UnknownWrites(never)
            waited = time.monotonic() - started
            if waited >= self.consistency_timeout:
                raise NotCaughtUp(waited, behind)
            await asyncio.sleep(min(delay, max(0.0, self.consistency_timeout - waited)))
            delay = min(delay * 2, 0.05)

    # --- lag -------------------------------------------------------------------------------

    async def lag(self, models: tuple[str, ...]) -> tuple[int, float] | None:
        """(events, seconds) the slowest of ``models`` may be behind; refreshed every second."""
        self._measure_lag()
        if not self._lag:
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(self._first_lag()), 1.0)
        return self._known_lag(models)

    def lag_fields(self, models: tuple[str, ...]) -> list[tuple[bytes, bytes]] | None:
        """``Read-Model-Lag-Events`` / ``-Seconds`` as encoded header fields (none when no model
        of ``models`` has figures), made once per measurement; None before the first measurement,
        which only ``lag`` waits for."""
        self._measure_lag()
        current = self._lag
        if not current:
            return None
        made = self._lag_fields.get(models)
        if made is not None and made[0] is current:
            return made[1]
        lag = self._known_lag(models)
        fields = [] if lag is None else [(b"read-model-lag-events", str(lag[0]).encode()),
                                         (b"read-model-lag-seconds", f"{lag[1]:.3f}".encode())]  # fmt: skip
        self._lag_fields[models] = (current, fields)
        return fields

    def count_near_hits(self, n: int) -> None:
        self._near_hits.inc(n)

    def _measure_lag(self) -> None:
        if self._lag_task is None or self._lag_task.done():
            self._lag_task = asyncio.create_task(self._refresh_lag(), name="read-model-lag")

    def _known_lag(self, models: tuple[str, ...]) -> tuple[int, float] | None:
        known = [self._lag[m] for m in models if m in self._lag]
        if not known:
            return None
        return max(lag.events for lag in known), max(lag.seconds for lag in known)

    async def _first_lag(self) -> None:
        while not self._lag:
            await asyncio.sleep(0.01)

    async def _refresh_lag(self) -> None:
        while True:
            try:
                self._lag = await self._lag_meter.measure()
            except Exception as exc:  # noqa: BLE001 - lag is advisory; keep the last figures
                log.warning("read-model lag measurement failed: %r", exc)
            await asyncio.sleep(1.0)

    async def close(self) -> None:
        if self._lag_task is not None:
            self._lag_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lag_task
