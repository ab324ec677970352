"""The one place where things are wired: each process's parts, built from Settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from functools import partial
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram
from redis.asyncio import Redis
from starlette.applications import Starlette

from event_store.checkpoints import Checkpoints
from event_store.kafka import ensure_topics, make_producer
from event_store.postgres import PostgresEventStore, make_pool
from event_store.relay import Relay, RelayConfig
from schemas.catalog import public_data
from schemas.envelope import RecordedEvent
from taskstream.settings import Settings

if TYPE_CHECKING:
    from gateway.ratelimit import RateLimits

log = logging.getLogger("taskstream")


def relay_lag_histogram(registry: CollectorRegistry | None = None) -> Histogram:
    return Histogram(
        "taskstream_relay_lag_seconds",
        "Time from an event's commit to the broker's acknowledgement of it",
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        registry=registry,
    )


async def run_relay(settings: Settings, stop: asyncio.Event) -> None:
    store = await PostgresEventStore.connect(settings.database_url, min_size=1, max_size=4)
    producer = make_producer(settings.kafka_bootstrap_servers, client_id=f"{settings.kafka_client_id}-relay")
    lag = relay_lag_histogram()

    def observe(batch: Sequence[RecordedEvent], acked_at: float) -> None:
        for event in batch:
            lag.observe(max(0.0, acked_at - event.recorded_at.timestamp()))

    try:
        while not stop.is_set():  # the broker may come up after us
            try:
                await producer.start()
                break
            except Exception as exc:  # noqa: BLE001 - any start failure is retried
                log.warning("relay: broker %s not reachable yet: %r", settings.kafka_bootstrap_servers, exc)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
        else:
            return
        relay = Relay(
            store,
            Checkpoints(store.pool),
            producer,
            RelayConfig(
                topic_prefix=settings.kafka_topic_prefix,
                checkpoint_name=settings.relay_checkpoint_name,
                batch_size=settings.relay_batch_size,
            ),
            ensure_topics=partial(ensure_topics, settings.kafka_bootstrap_servers),
            observe=observe,
            redact=public_data,
        )
        started = time.monotonic()
        await relay.run(stop)
        log.info("relay stopped at position %d after %.0f s", relay.position, time.monotonic() - started)
    finally:
        with contextlib.suppress(Exception):
            await producer.stop()
        await store.close()


def build_gateway(settings: Settings) -> Starlette:
    """The gateway app: the pool opens in the lifespan, inside uvicorn's event loop."""
    from commands.service import Service
    from gateway.app import create_app
    from gateway.auth import build_auth
    from gateway.routes import Deps

    pool = make_pool(settings.database_url, min_size=4, max_size=20)
    store = PostgresEventStore(pool)
    issuer, verifier = build_auth(settings)
    redis_client = Redis.from_url(settings.redis_url, socket_connect_timeout=1, socket_timeout=1)
    deps = Deps(
        service=Service(store, retries=settings.command_retries),
        verifier=verifier,
        issuer=issuer,
        max_body_bytes=settings.max_body_bytes,
        limits=rate_limits(settings, redis_client),
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
            yield
        finally:
            await store.close()
            await redis_client.aclose()

    return create_app(deps, readiness={"database": database, "broker": broker}, lifespan=lifespan)


def uvicorn_options(settings: Settings) -> dict[str, object]:
    """How uvicorn serves the gateway. Forwarded headers (X-Forwarded-For/-Proto) are believed
    only from ``forwarded_allow_ips``: from any other peer they are ignored, so the rate limits
    and logs see the real peer address, whatever a client writes in them."""
    return {
        "host": settings.http_host,
        "port": settings.http_port,
        "proxy_headers": True,
        "forwarded_allow_ips": settings.forwarded_allow_ips,
    }


def rate_limits(settings: Settings, redis_client: Redis) -> RateLimits | None:
    """The gateway's policies per route class from the settings (a quota of 0 is no limit)."""
    from gateway.ratelimit import Policy, RateLimits, RedisRateLimiter

    quotas = {
        "credentials": (settings.auth_rate_limit_per_minute, 60),
        "login-account": (settings.auth_account_rate_limit_per_hour, 3600),
        "write": (settings.rate_limit_write_per_minute, 60),
        "read": (settings.rate_limit_read_per_minute, 60),
    }
    policies = {name: Policy(name, quota, window) for name, (quota, window) in quotas.items() if quota > 0}
    if not policies:
        return None
    return RateLimits(RedisRateLimiter(redis_client, failure_mode=settings.rate_limit_failure_mode), policies)


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
