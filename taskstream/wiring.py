"""The one place where things are wired: each process's parts, built from Settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from datetime import timedelta
from collections.abc import AsyncIterator, Awaitable, Sequence
from functools import partial
from typing import TypeVar

from prometheus_client import CollectorRegistry, Histogram
from redis.asyncio import Redis
from starlette.applications import Starlette

from event_store.checkpoints import Checkpoints
from event_store.idempotency import expiring
from event_store.kafka import KafkaLog, KafkaTopics, TopicSettings, partition_for
from event_store.leadership import leadership
from event_store.postgres import PostgresEventStore, make_pool
from event_store.relay import Relay, RelayConfig
from schemas.catalog import public_data
from schemas.envelope import RecordedEvent
from taskstream.settings import Settings, SettingsError

log = logging.getLogger("taskstream")
T = TypeVar("T")


def relay_lag_histogram(registry: CollectorRegistry | None = None) -> Histogram:
    return Histogram(
        "taskstream_relay_lag_seconds",
        "Time from an event's commit to the broker's acknowledgement of it",
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        registry=registry,
    )


async def run_relay(settings: Settings, stop: asyncio.Event) -> None:
    """Wait for leadership, publish while it holds, wait again if it is lost; until ``stop``."""
    pool = make_pool(
        settings.database_url, min_size=1, max_size=4, lock_timeout_ms=settings.db_lock_timeout_ms,
        statement_timeout_ms=settings.db_statement_timeout_ms, wait_timeout=settings.db_pool_timeout_seconds,
    )  # fmt: skip
    await pool.open(wait=False)  # PostgreSQL may come up after us: leadership and attempts retry
    store = PostgresEventStore(pool)
    lag = relay_lag_histogram()

    def observe(batch: Sequence[RecordedEvent], acked_at: float) -> None:
        for event in batch:
            lag.observe(max(0.0, acked_at - event.recorded_at.timestamp()))

    try:
        while not stop.is_set():
            async with contextlib.AsyncExitStack() as stack:
                lease = await _until_stopped(
                    stack.enter_async_context(
                        leadership(settings.database_url, settings.relay_checkpoint_name,
                                   retry_interval=settings.relay_leader_retry_seconds)
                    ),
                    stop,
                )  # fmt: skip
                if lease is None:
                    return
                relay = build_relay(settings, store, observe=observe, fence=lease.check)
                halt = asyncio.Event()
                watchers = [asyncio.create_task(_relay_event(e, halt)) for e in (stop, lease.lost)]
                started = time.monotonic()
                try:
                    await relay.run(halt)
                finally:
                    for watcher in watchers:
                        watcher.cancel()
                log.info("relay stopped at position %d after %.0f s", relay.position, time.monotonic() - started)
    finally:
        await store.close()


def build_relay(settings: Settings, store: PostgresEventStore, **kwargs: object) -> Relay:
    bootstrap = settings.kafka_bootstrap_servers
    return Relay(
        store,
        Checkpoints(store.pool),
        partial(KafkaLog.connect, bootstrap, f"{settings.kafka_client_id}-relay"),
        RelayConfig(
            topic_prefix=settings.kafka_topic_prefix,
            checkpoint_name=settings.relay_checkpoint_name,
            batch_size=settings.relay_batch_size,
            log_check_interval=settings.relay_log_check_interval,
        ),
        partitioner=partition_for,
        topics=KafkaTopics(bootstrap, topic_settings(settings)),
        redact=public_data,
        **kwargs,  # type: ignore[arg-type]
    )


def topic_settings(settings: Settings) -> TopicSettings:
    return TopicSettings(settings.kafka_partitions, settings.kafka_replication_factor, settings.kafka_min_insync_replicas)


async def _relay_event(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


async def _until_stopped(awaitable: Awaitable[T], stop: asyncio.Event) -> T | None:
    """``awaitable``'s result, or None (it is cancelled) if ``stop`` is set first."""
    task = asyncio.ensure_future(awaitable)
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


def build_gateway(settings: Settings) -> Starlette:
    """The gateway app: the pool opens in the lifespan, inside uvicorn's event loop."""
    from commands.service import Service
    from gateway.app import create_app
    from gateway.auth import build_auth
    from gateway.ratelimit import RedisRateLimiter
    from gateway.routes import Deps

    pool = make_pool(
        settings.database_url, min_size=4, max_size=20, lock_timeout_ms=settings.db_lock_timeout_ms,
        statement_timeout_ms=settings.db_statement_timeout_ms, wait_timeout=settings.db_pool_timeout_seconds,
    )  # fmt: skip
    store = PostgresEventStore(pool)
    issuer, verifier = build_auth(settings)
    redis_client = Redis.from_url(settings.redis_url, socket_connect_timeout=1, socket_timeout=1)
    limiter = None
    if settings.auth_rate_limit_per_minute > 0:
        limiter = RedisRateLimiter(redis_client, limit=settings.auth_rate_limit_per_minute, window_seconds=60)
    deps = Deps(
        service=Service(store, retries=settings.command_retries),
        verifier=verifier,
        issuer=issuer,
        max_body_bytes=settings.max_body_bytes,
        credentials_limiter=limiter,
    )

    async def database() -> None:
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")

    async def broker() -> None:
        await broker_reachable(settings.kafka_bootstrap_servers)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await pool.open(wait=False)
        try:
            retention = timedelta(hours=settings.idempotency_retention_hours)
            async with expiring(pool, retention, settings.idempotency_cleanup_interval_seconds):
                yield
        finally:
            await store.close()
            await redis_client.aclose()

    return create_app(
        deps, readiness={"database": database, "broker": broker}, lifespan=lifespan,
        request_timeout=settings.http_request_timeout_seconds, fingerprint_key=fingerprint_key(settings),
    )  # fmt: skip


def fingerprint_key(settings: Settings) -> bytes:
    """IDEMPOTENCY_SECRET; else derived from an HS256 JWT_SECRET; else, in the dev stack only,
    a key for this process."""
    from commands.fingerprints import derive_key

    if settings.idempotency_secret:
        return derive_key(settings.idempotency_secret)
    if settings.jwt_algorithm == "HS256" and settings.jwt_secret:
        return derive_key(settings.jwt_secret)
    if settings.dev_mode:
        return secrets.token_bytes(32)
    raise SettingsError("IDEMPOTENCY_SECRET is not set (needed with RS256 tokens; the same in every gateway)")


async def broker_reachable(bootstrap_servers: str, timeout: float = 1.0) -> None:
    """Any bootstrap server that accepts a TCP connection counts as reachable."""
    errors = []
    for server in bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host or "127.0.0.1", int(port)), timeout)
        except (OSError, ValueError, asyncio.TimeoutError) as exc:
            errors.append(f"{server}: {exc!r}")
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
    raise ConnectionError("; ".join(errors) or "no bootstrap servers")
