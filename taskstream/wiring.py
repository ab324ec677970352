"""The one place where things are wired: each process's parts, built from Settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from functools import partial

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
    from gateway.ratelimit import RedisRateLimiter
    from gateway.routes import Deps

    pool = make_pool(settings.database_url, min_size=4, max_size=20)
    store = PostgresEventStore(pool)
    issuer, verifier = build_auth(settings)
    workers, task_kinds = build_worker_parts(settings, pool)
    redis_client = Redis.from_url(settings.redis_url, socket_connect_timeout=1, socket_timeout=1)
    limiter = None
    if settings.auth_rate_limit_per_minute > 0:
        limiter = RedisRateLimiter(redis_client, limit=settings.auth_rate_limit_per_minute, window_seconds=60)
    deps = Deps(
        service=Service(store, retries=settings.command_retries, task_kinds=task_kinds),
        verifier=verifier,
        issuer=issuer,
        max_body_bytes=settings.max_body_bytes,
        credentials_limiter=limiter,
        workers=workers,
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


def build_worker_parts(settings: Settings, pool: object) -> tuple[object, frozenset[str] | None]:
    """The gateway's share of the worker pool: result links, webhook endpoints, the dead list;
    and the task kinds a submission may name (None: any)."""
    from gateway.worker_routes import WorkerDeps
    from workers.blobs import blob_store_from_settings
    from workers.kinds import load_registry
    from workers.leases import dead_tasks
    from workers.links import ResultLinks
    from workers.webhooks.endpoints import WebhookEndpoints

    try:
        secret = settings.link_secret()
    except ValueError:  # an RS256-only gateway without BLOB_LINK_SECRET: no local links
        secret = b""
    parts = WorkerDeps(
        links=ResultLinks(blob_store_from_settings(settings), secret, settings.blob_link_ttl_seconds),
        webhooks=WebhookEndpoints(pool, settings.webhook_allow_loopback, settings.webhook_secret_grace_seconds),  # type: ignore[arg-type]
        dead_tasks=lambda limit: dead_tasks(pool, limit),  # type: ignore[arg-type]
    )
    kinds = load_registry(settings.worker_modules).kinds() if settings.task_kinds_check else None
    return parts, kinds


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


def worker_identity() -> str:
    import os
    import socket
    import uuid

    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


async def run_worker(settings: Settings, stop: asyncio.Event, *, concurrency: int | None = None, metrics_port: int | None = None) -> None:
    """``taskstream work``: the log consumer, the claim loop, the listener, webhooks, /metrics."""
    from aiokafka import AIOKafkaConsumer
    from prometheus_client import start_http_server

    from commands.service import Service
    from workers.blobs import S3BlobStore, blob_store_from_settings
    from workers.consumer import TaskLogConsumer, listen
    from workers.kinds import Services, load_registry
    from workers.leases import Leases
    from workers.metrics import WorkerMetrics
    from workers.runner import Worker, WorkerConfig
    from workers.webhooks.sender import WebhookSender

    concurrency = concurrency or settings.worker_concurrency
    worker_id = worker_identity()
    kinds = load_registry(settings.worker_modules)
    store = await PostgresEventStore.connect(settings.database_url, min_size=2, max_size=max(6, concurrency + 4))
    blobs = blob_store_from_settings(settings)
    if isinstance(blobs, S3BlobStore):
        await blobs.ensure_bucket()
    metrics = WorkerMetrics.create(worker_id, concurrency)
    port = settings.worker_metrics_port if metrics_port is None else metrics_port
    if port:
        server, thread = start_http_server(port, addr=settings.http_host, registry=metrics.registry)
    leases = Leases(store.pool, worker_id, settings.worker_lease_seconds)
    worker = Worker(
        Service(store, retries=settings.command_retries),
        leases,
        kinds,
        Services(store, blobs, settings),
        WorkerConfig(
            worker_id=worker_id,
            concurrency=concurrency,
            lease_seconds=settings.worker_lease_seconds,
            poll_seconds=settings.worker_poll_seconds,
            retry_base_seconds=settings.worker_retry_base_seconds,
            retry_max_seconds=settings.worker_retry_max_seconds,
            shutdown_grace_seconds=settings.worker_shutdown_grace_seconds,
        ),
        on_busy=lambda busy: metrics.set_busy(worker_id, busy),
    )
    sender = WebhookSender(store.pool, settings, metrics)
    topic = settings.topic_for("task")

    def new_consumer() -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            topic,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            client_id=f"{settings.kafka_client_id}-worker",
            group_id=settings.worker_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=settings.worker_session_timeout_ms,
            heartbeat_interval_ms=max(100, settings.worker_session_timeout_ms // 4),
            max_poll_records=500,
            fetch_max_wait_ms=settings.worker_fetch_max_wait_ms,  # tansu answers a fetch only after about this
        )

    async def queue_depth() -> None:
        """The gauge every 2 s; every hour, forget old rows at rest."""
        pruned_at = time.monotonic()
        while not stop.is_set():
            with contextlib.suppress(Exception):
                metrics.queue_depth.set(await leases.queue_depth())
            if time.monotonic() - pruned_at > 3600:
                pruned_at = time.monotonic()
                with contextlib.suppress(Exception):
                    await leases.prune()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 2.0)

    background: list[asyncio.Task[None]] = []
    consumer_started = False
    try:
        while not stop.is_set():  # the broker may come up after us
            consumer = new_consumer()
            try:
                await ensure_topics(settings.kafka_bootstrap_servers, [topic])
                await consumer.start()
                consumer_started = True
                break
            except Exception as exc:  # noqa: BLE001 - any start failure is retried, with a new client
                log.warning("worker: broker %s not ready yet: %r", settings.kafka_bootstrap_servers, exc)
                with contextlib.suppress(Exception):
                    await consumer.stop()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
        if not consumer_started:
            return
        log.info("worker %s: %d slots, kinds %s", worker_id, concurrency, ", ".join(sorted(kinds.kinds())))
        log_consumer = TaskLogConsumer(consumer, worker, leases, store.pool, fanout=sender.enqueue)
        background = [
            asyncio.create_task(listen(settings.database_url, worker, stop)),
            asyncio.create_task(queue_depth()),
            asyncio.create_task(sender.run(stop)),
        ]
        claims = asyncio.create_task(worker.run(stop))
        consuming = asyncio.create_task(log_consumer.run(stop))
        await stop.wait()
        consuming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consuming
        await claims  # drains: running tasks get their grace period
    finally:
        for t in background:
            t.cancel()
        for t in background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if consumer_started:
            with contextlib.suppress(Exception):
                await consumer.stop()
        if port:
            server.shutdown()
        await store.close()
