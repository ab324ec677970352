"""The one place where things are wired: each process's parts, built from Settings."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from prometheus_client import CollectorRegistry, Gauge, GCCollector, Histogram, PlatformCollector, ProcessCollector
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis
from starlette.applications import Starlette

from event_store.checkpoints import Checkpoints
from event_store.errors import StoreUnavailable
from event_store.idempotency import expiring
from event_store.kafka import KafkaLog, KafkaTopics, TopicSettings, ensure_topics, partition_for
from event_store.leadership import leadership
from event_store.postgres import PostgresEventStore, make_pool
from event_store.relay import Relay, RelayConfig
from schemas.catalog import public_data
from schemas.envelope import RecordedEvent
from taskstream.settings import Settings, SettingsError
from taskstream.telemetry import register_disk_metrics, register_pool_metrics, serve_metrics

if TYPE_CHECKING:
    import socket

    import uvicorn

    from gateway.ratelimit import RateLimits

log = logging.getLogger("taskstream")
T = TypeVar("T")


BACKLOG_INTERVAL = 5.0  # seconds between two counts of the relay's backlog


def relay_lag_histogram(registry: CollectorRegistry | None = None) -> Histogram:
    return Histogram(
        "taskstream_relay_lag_seconds",
        "Time from an event's commit to the broker's acknowledgement of it",
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        registry=registry,
    )


def relay_backlog_gauge(registry: CollectorRegistry | None = None) -> Gauge:
    return Gauge("taskstream_relay_lag_events", "Events in the table past the relay's checkpoint (not yet published)", registry=registry)


async def count_backlog(checkpoints: Checkpoints, name: str, gauge: Gauge, stop: asyncio.Event, interval: float = BACKLOG_INTERVAL) -> None:
    """Keep ``gauge`` at the number of events past checkpoint ``name``, counted in PostgreSQL
    (not from broker offsets, which tansu reports wrong), until ``stop``."""
    while not stop.is_set():
        try:
            gauge.set(await checkpoints.events_past(name))
        except StoreUnavailable as exc:
            log.warning("cannot count the backlog of %s: %s", name, exc)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


def process_registry(settings: Settings, pool: AsyncConnectionPool | None = None) -> CollectorRegistry:
    """A process's registry with what every process exports: the process itself (CPU,
    memory, file descriptors, garbage collection), its pool and the data folders."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    if pool is not None:
        register_pool_metrics(registry, pool)
    if settings.disk_paths:
        register_disk_metrics(registry, settings.disk_paths)
    return registry


async def run_relay(settings: Settings, stop: asyncio.Event) -> None:
    """Wait for leadership, publish while it holds, wait again if it is lost; until ``stop``.
    Its metrics (lag, backlog, pool, disk) are served all along, leader or not."""
    pool = make_pool(
        settings.database_url, min_size=1, max_size=4, lock_timeout_ms=settings.db_lock_timeout_ms,
        statement_timeout_ms=settings.db_statement_timeout_ms, wait_timeout=settings.db_pool_timeout_seconds,
    )  # fmt: skip
    await pool.open(wait=False)  # PostgreSQL may come up after us: leadership and attempts retry
    store = PostgresEventStore(pool)
    registry = process_registry(settings, pool)
    lag = relay_lag_histogram(registry)
    backlog = relay_backlog_gauge(registry)
    metrics = serve_metrics(registry, settings.metrics_host, settings.metrics_port)
    log.info("relay metrics at %s", metrics.url)
    counting = asyncio.create_task(count_backlog(Checkpoints(pool), settings.relay_checkpoint_name, backlog, stop))

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
        counting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await counting
        metrics.close()
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
            batch_interval=settings.relay_batch_interval,
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
    from gateway.routes import Deps
    from gateway.sse import Streams

    pool = make_pool(
        settings.database_url, min_size=4, max_size=20, lock_timeout_ms=settings.db_lock_timeout_ms,
        statement_timeout_ms=settings.db_statement_timeout_ms, wait_timeout=settings.db_pool_timeout_seconds,
    )  # fmt: skip
    store = PostgresEventStore(pool)
    issuer, verifier = build_auth(settings)
    workers, task_kinds = build_worker_parts(settings, pool)
    redis_client = Redis.from_url(settings.redis_url, socket_connect_timeout=1, socket_timeout=1)
    registry = process_registry(settings, pool)
    reads, invalidations = build_reads(settings, pool, redis_client, registry)
    streams = Streams.build(store, heartbeat=settings.sse_heartbeat_seconds, queue_size=settings.sse_queue_events,
                            poll_interval=settings.sse_poll_seconds, registry=registry)  # fmt: skip
    deps = Deps(
        service=Service(store, retries=settings.command_retries, task_kinds=task_kinds),
        verifier=verifier,
        issuer=issuer,
        max_body_bytes=settings.max_body_bytes,
        limits=rate_limits(settings, redis_client),
        reads=reads,
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
        tracking = asyncio.create_task(invalidations.run(), name="near-cache-invalidations") if invalidations else None
        try:
            retention = timedelta(hours=settings.idempotency_retention_hours)
            async with expiring(pool, retention, settings.idempotency_cleanup_interval_seconds):
                yield
        finally:
            if tracking is not None:
                tracking.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await tracking
            await streams.close()
            await reads.close()
            await store.close()
            await redis_client.aclose()

    return create_app(
        deps, readiness={"database": database, "broker": broker}, lifespan=lifespan, registry=registry,
        request_timeout=settings.http_request_timeout_seconds, fingerprint_key=fingerprint_key(settings), streams=streams,
    )  # fmt: skip


def build_reads(settings: Settings, pool: object, redis_client: Redis, registry: CollectorRegistry) -> tuple[object, object]:
    """The query side of a gateway: Redis read cache, near-cache and its invalidations, lag."""
    from gateway.nearcache import Invalidations, NearCache
    from gateway.readmodels import Reads
    from projections.cache import ReadCache
    from projections.catalog import MODELS
    from projections.lag import LagMeter

    cache = ReadCache(redis_client, ttl_seconds=settings.cache_ttl_seconds)
    near = NearCache(max_entries=settings.near_cache_entries) if settings.near_cache_entries > 0 else None
    invalidations = None
    if near is not None:
        kwargs = redis_client.connection_pool.connection_kwargs
        invalidations = Invalidations(near, host=kwargs.get("host", "127.0.0.1"), port=int(kwargs.get("port", 6379)),
                                      password=kwargs.get("password"), db=int(kwargs.get("db", 0)))  # fmt: skip
    reads = Reads(pool, cache, near, LagMeter(pool, list(MODELS.values())),  # type: ignore[arg-type]
                  consistency_timeout=settings.read_consistency_timeout, absent_ttl=settings.cache_absent_ttl_seconds,
                  registry=registry)  # fmt: skip
    return reads, invalidations


def uvicorn_options(settings: Settings) -> dict[str, object]:
    """How uvicorn serves the gateway. Forwarded headers (X-Forwarded-For/-Proto) are believed
    only from ``forwarded_allow_ips``: from any other peer they are ignored, so the rate limits
    and logs see the real peer address, whatever a client writes in them."""
    return {
        "host": settings.http_host,
        "port": settings.http_port,
        "proxy_headers": True,
        "forwarded_allow_ips": settings.forwarded_allow_ips,
        "timeout_graceful_shutdown": settings.http_shutdown_grace_seconds,
    }


def gateway_server(config: uvicorn.Config) -> uvicorn.Server:
    """uvicorn's server, ending the event streams first when it shuts down: uvicorn waits for
    open requests before the lifespan's shutdown, and a stream never ends by itself, so without
    this every shutdown with a stream open would last the whole grace period (and then cut the
    streams without their final ``closing`` event)."""
    import uvicorn

    class GatewayServer(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            streams = getattr(getattr(self.config.app, "state", None), "event_streams", None)
            if streams is not None:
                await streams.close()
            await super().shutdown(sockets)

    return GatewayServer(config)


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


# --- the projector ----------------------------------------------------------------------------


def build_projectors(settings: Settings, store: PostgresEventStore, cache: object | None, *, consumer: str,
                     names: Sequence[str] | None = None) -> dict[str, object]:  # fmt: skip
    from projections.catalog import MODELS
    from projections.runtime import Projector
    from schemas.catalog import registry

    wanted = list(names or MODELS)
    return {
        name: Projector(MODELS[name], store.pool, store.read_streams, registry(), consumer=consumer, cache=cache)  # type: ignore[arg-type]
        for name in wanted
    }


async def run_projector(settings: Settings, stop: asyncio.Event, *, names: Sequence[str] | None = None) -> None:
    """``taskstream project``: the faust app over the category topics, until ``stop``."""
    import os
    import socket
    import shutil
    import tempfile

    from projections.cache import ReadCache
    from projections.catalog import MODELS
    from projections.lag import LagMeter
    from projections.stream import StreamConfig, build_app, topics

    store = await PostgresEventStore.connect(settings.database_url, min_size=2, max_size=6)
    redis_client = Redis.from_url(settings.redis_url, socket_connect_timeout=1, socket_timeout=2)
    cache = ReadCache(redis_client, ttl_seconds=settings.cache_ttl_seconds)
    consumer = f"{socket.gethostname()}:{os.getpid()}"
    projectors = build_projectors(settings, store, cache, consumer=consumer, names=names)
    config = StreamConfig(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=settings.projector_group_id,
        topic_prefix=settings.kafka_topic_prefix,
        batch_size=settings.projector_batch_size,
        session_timeout=settings.projector_session_timeout,
        heartbeat_interval=min(3.0, settings.projector_session_timeout / 6),
        # faust creates its datadir even with the memory store: a temporary one, not the cwd
        data_dir=tempfile.mkdtemp(prefix="taskstream-projector-"),
    )
    registry = process_registry(settings, store.pool)
    lag_events = Gauge("taskstream_projection_lag_events", "Events of the category not yet in the read model",
                       ["projection"], registry=registry)  # fmt: skip
    lag_seconds = Gauge("taskstream_projection_lag_seconds", "Age of the oldest event not yet in the read model",
                        ["projection"], registry=registry)  # fmt: skip
    metrics = serve_metrics(registry, settings.metrics_host, settings.metrics_port)
    log.info("projector metrics at %s", metrics.url)
    meter = LagMeter(store.pool, [MODELS[n] for n in projectors])
    app = None
    try:
        while not stop.is_set():  # the broker may come up after us
            try:
                await ensure_topics(settings.kafka_bootstrap_servers, topics(config, projectors.values()), topic_settings(settings))  # type: ignore[arg-type]
                break
            except Exception as exc:  # noqa: BLE001 - retried until the broker answers
                log.warning("projector: broker %s not reachable yet: %r", settings.kafka_bootstrap_servers, exc)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
        if stop.is_set():
            return
        app = build_app(config, projectors)  # type: ignore[arg-type]
        await app.start()
        log.info("projector %s running: %s", consumer, ", ".join(projectors))
        while not stop.is_set():
            try:
                for name, lag in (await meter.measure()).items():
                    lag_events.labels(name).set(lag.events)
                    lag_seconds.labels(name).set(lag.seconds)
            except Exception as exc:  # noqa: BLE001 - metrics must not stop the projector
                log.warning("projector: lag measurement failed: %r", exc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        if app is not None:
            await app.stop()
        shutil.rmtree(config.data_dir or "", ignore_errors=True)
        metrics.close()
        await redis_client.aclose()
        await store.close()


# --- the worker pool --------------------------------------------------------------------------


def worker_disk_paths(settings: Settings) -> tuple[Path, ...]:
    """The data folders a worker watches: the configured ones and its local blob folder."""
    local = (settings.blob_dir,) if settings.blob_backend == "local" else ()
    return tuple(dict.fromkeys((*settings.disk_paths, *local)))


def worker_identity() -> str:
    import os
    import socket
    import uuid

    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


async def run_worker(settings: Settings, stop: asyncio.Event, *, concurrency: int | None = None, metrics_port: int | None = None) -> None:
    """``taskstream work``: the log consumer, the claim loop, the listener, the tail of new
    submissions in PostgreSQL (``worker_tail_submissions``), webhooks, /metrics."""
    from aiokafka import AIOKafkaConsumer
    from prometheus_client import start_http_server

    from commands.service import Service
    from workers.blobs import S3BlobStore, blob_store_from_settings
    from workers.consumer import TaskLogConsumer, listen
    from workers.kinds import Services, load_registry
    from workers.lag import ConsumerLagMeter
    from workers.leases import Leases
    from workers.metrics import WorkerMetrics
    from workers.runner import Worker, WorkerConfig
    from workers.tail import tail_submissions
    from workers.webhooks.sender import WebhookSender

    concurrency = concurrency or settings.worker_concurrency
    worker_id = worker_identity()
    kinds = load_registry(settings.worker_modules)
    store = await PostgresEventStore.connect(settings.database_url, min_size=2, max_size=max(6, concurrency + 4))
    blobs = blob_store_from_settings(settings)
    if isinstance(blobs, S3BlobStore):
        await blobs.ensure_bucket()
    registry = process_registry(dataclasses.replace(settings, disk_paths=worker_disk_paths(settings)), store.pool)
    metrics = WorkerMetrics.create(worker_id, concurrency, registry)
    lag = ConsumerLagMeter(store.pool)
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
        """The gauges every 2 s (queue depth, consumer lag); every hour, forget old rows at rest."""
        pruned_at = time.monotonic()
        while not stop.is_set():
            with contextlib.suppress(Exception):
                metrics.queue_depth.set(await leases.queue_depth())
            try:
                measured = await lag.measure()
                metrics.lag_events.set(measured.events)
                metrics.lag_seconds.set(measured.seconds)
            except Exception as exc:  # noqa: BLE001 - metrics must not stop the worker
                log.warning("worker: consumer lag measurement failed: %r", exc)
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
                await ensure_topics(settings.kafka_bootstrap_servers, [topic], topic_settings(settings))
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
        if settings.worker_tail_submissions:
            free = lambda: 0 if worker.stopping else concurrency - worker.busy  # noqa: E731
            background.append(asyncio.create_task(tail_submissions(settings.database_url, log_consumer.take_now, free, stop)))
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


# --- replay and verify (operators' commands) ---------------------------------------------------


def replay_database_url(settings: Settings) -> str:
    """A replay creates, renames and drops tables: it runs as their owner (the migrations' role)."""
    return settings.migration_database_url or settings.database_url


def run_replay(settings: Settings, request: object, *, progress: object | None = None, stopped: object = None) -> object:
    """``taskstream replay``: rebuild (and swap in) read models; the gateways' caches are
    invalidated through Redis after the swap (see projections/replay.py)."""
    from projections.replay import Replay, redis_invalidator

    replay = Replay(replay_database_url(settings), request, progress=progress,  # type: ignore[arg-type]
                    invalidate=redis_invalidator(settings.redis_url) if settings.redis_url else None,
                    stopped=stopped or (lambda: False))  # type: ignore[arg-type]  # fmt: skip
    return replay.run()


def run_verify(settings: Settings, models: Sequence[str], *, progress: object | None = None, settle: float = 5.0) -> list[object]:
    """``taskstream verify``: a replay to the head built beside the live tables, compared with
    them, then dropped."""
    from projections import verify
    from projections.replay import Replay, Request, connect, discard

    url = replay_database_url(settings)
    with connect(url) as conn:
        head = int(conn.execute("SELECT COALESCE(max(global_position), 0) FROM events").fetchone()[0])  # type: ignore[index]
    result = Replay(url, Request(models=tuple(models), until_position=head), progress=progress).run()  # type: ignore[arg-type]
    try:
        with connect(url) as conn:
            return [verify.compare(conn, m, m, t, settle=settle) for m, t in result.tables.items()]
    finally:
        discard(url, result.run_id)
