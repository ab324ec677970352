"""One frozen settings object, built from the environment in each entry point and passed down.

Tests build ``Settings`` directly. Secrets have no usable defaults outside the dev stack: the
gateway refuses to start without a JWT key unless ``dev_mode`` is set by ``taskstream dev``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

JwtAlgorithm = Literal["HS256", "RS256"]
BlobBackend = Literal["local", "s3"]
RateLimitFailureMode = Literal["open", "closed"]


class SettingsError(ValueError):
    """The environment does not describe a usable configuration."""


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str  # the app role (taskstream/dbroles.py): SELECT and INSERT on events
    migration_database_url: str | None = None  # the owner role, for `taskstream migrate`; default database_url
    redis_url: str = "redis://127.0.0.1:6379/0"
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_topic_prefix: str = "events."
    kafka_client_id: str = "taskstream"
    # Topics the relay creates. Dev: 1 and 1 (one broker). Production, 3+ brokers: replication
    # factor 3 and min.insync.replicas 2, so acks=all means two copies before an ack.
    kafka_partitions: int = 4
    kafka_replication_factor: int = 1
    kafka_min_insync_replicas: int = 1

    blob_backend: BlobBackend = "local"
    blob_dir: Path = Path(".taskstream/blobs")
    s3_endpoint_url: str | None = None
    s3_bucket: str = "taskstream"
    s3_region: str = "us-east-1"

    http_host: str = "127.0.0.1"
    http_port: int = 8000
    max_body_bytes: int = 1_048_576
    # Rate limits (GCRA in Redis, see gateway.ratelimit); 0 turns one off.
    auth_rate_limit_per_minute: int = 30  # registrations and logins per client address (IPv6: per /64)
    auth_account_rate_limit_per_hour: int = 20  # logins per account, from any address
    rate_limit_write_per_minute: int = 600  # writes per principal (token subject, else address)
    rate_limit_read_per_minute: int = 1200  # reads per principal
    rate_limit_failure_mode: RateLimitFailureMode = "open"  # Redis down: let through, or answer 503
    # Peers whose X-Forwarded-For/-Proto uvicorn believes (comma-separated IPs or CIDRs, "*" for
    # all): only the proxy in front of the gateway, else clients choose their own address.
    forwarded_allow_ips: str = "127.0.0.1"

    jwt_algorithm: JwtAlgorithm = "HS256"
    jwt_secret: str | None = field(default=None, repr=False)
    jwt_private_key_file: Path | None = None
    jwt_public_key_file: Path | None = None
    jwt_jwks_url: str | None = None
    jwt_issuer: str = "taskstream"
    jwt_audience: str = "taskstream-api"
    jwt_ttl_seconds: int = 3600

    # Idempotency records: fingerprints are HMACs under this secret (default: derived from an
    # HS256 JWT_SECRET; required otherwise outside the dev stack), kept this long, then deleted.
    idempotency_secret: str | None = field(default=None, repr=False)
    idempotency_retention_hours: float = 24.0
    idempotency_cleanup_interval_seconds: float = 600.0

    relay_batch_size: int = 500
    relay_checkpoint_name: str = "relay"
    relay_log_check_interval: float = 2.0  # seconds between checks that the broker kept its log
    relay_batch_interval: float = 0.02  # under load, the least seconds between two batches (fewer, larger ones)
    relay_leader_retry_seconds: float = 1.0  # how often a waiting relay tries for leadership

    projector_group_id: str = "taskstream-projector"
    projector_batch_size: int = 2000  # the most events one transaction applies (group commit: no wait to fill)
    projector_session_timeout: float = 10.0  # consumer-group session; tansu joins take half of it (dev: 3)
    cache_ttl_seconds: int = 3600  # Redis entries of the read cache
    cache_absent_ttl_seconds: int = 30  # "no such row" entries (a client polling for its new task); 0: none kept
    near_cache_entries: int = 10_000  # per gateway process; 0: no near-cache
    read_consistency_timeout: float = 5.0  # seconds a read with a consistency token may wait
    command_retries: int = 3
    # Bounded waits (see event_store/postgres.py make_pool): a session that holds the append lock
    # makes appends fail with 503 + Retry-After after db_lock_timeout_ms instead of hanging.
    db_lock_timeout_ms: int = 5_000
    db_statement_timeout_ms: int = 15_000
    db_pool_timeout_seconds: float = 5.0
    http_request_timeout_seconds: float = 20.0  # an HTTP request's deadline: 503 + Retry-After after it
    dev_mode: bool = False

    # Telemetry. OpenTelemetry reads its own OTEL_* variables; logging reads LOG_FORMAT and
    # LOG_LEVEL before any settings exist (see taskstream/telemetry.py).
    metrics_host: str = "127.0.0.1"  # /metrics of the processes that serve no HTTP (relay, ...)
    metrics_port: int = 9464  # 0: any free port (tests)
    disk_paths: tuple[Path, ...] = ()  # data folders whose disk usage is exported
    # the worker pool (workers/)
    worker_concurrency: int = 8  # tasks at a time per process (`taskstream work --concurrency N`)
    worker_group: str = "taskstream-workers"  # the Kafka consumer group every worker joins
    worker_lease_seconds: float = 30.0  # a dead worker's task is taken over this long after its last renewal
    worker_poll_seconds: float = 1.0  # how often an idle worker looks for due work besides being woken
    worker_retry_base_seconds: float = 2.0  # backoff before retry n: base * 2**(n-1), full jitter, capped
    worker_retry_max_seconds: float = 600.0
    worker_shutdown_grace_seconds: float = 10.0
    worker_metrics_port: int = 9100  # the worker's own /metrics on http_host; 0: none
    worker_session_timeout_ms: int = 6000  # tansu joins a group in about half of this
    worker_fetch_max_wait_ms: int = 10  # tansu answers a fetch late (p50 7 ms at 20, 29 ms at 100, 133 ms at 500)
    worker_modules: str = ""  # extra modules to import for their task kinds (comma-separated)
    # workobs: besides the log, take new submissions straight from PostgreSQL (NOTIFY on append),
    # saving the relay -> broker -> fetch hop before a task starts (workers/tail.py)
    worker_tail_submissions: bool = True
    task_kinds_check: bool = False  # refuse kinds no installed handler knows at submission (422); dev: on

    # download links for results
    blob_link_secret: str | None = field(default=None, repr=False)  # default: derived from JWT_SECRET
    blob_link_ttl_seconds: int = 900

    # webhooks
    webhook_allow_loopback: bool = False  # `taskstream dev` turns it on: everything runs on one machine
    webhook_timeout_seconds: float = 10.0
    webhook_backoff_scale: float = 1.0  # multiplies the retry schedule (tests shrink it)
    webhook_disable_after: int = 15  # consecutive failed attempts before an endpoint is disabled
    webhook_secret_grace_seconds: int = 86_400  # an old secret still signs this long after a rotation

    # event streams for analysts (GET /v1/events/stream, gateway/sse.py)
    sse_heartbeat_seconds: float = 15.0  # a comment line this often while no event goes out
    sse_queue_events: int = 1000  # events waiting for one client at most; beyond: dropped (it resumes)
    sse_poll_seconds: float = 1.0  # the shared tailer's poll when no NOTIFY arrives
    # uvicorn: seconds open requests get to finish at shutdown before they are cancelled
    http_shutdown_grace_seconds: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        env = os.environ if env is None else env
        database_url = env.get("DATABASE_URL")
        if not database_url and "database_url" not in overrides:
            raise SettingsError("DATABASE_URL is not set")
        values: dict[str, object] = {"database_url": database_url}
        casts: dict[str, tuple[str, type | object]] = {
            "migration_database_url": ("MIGRATION_DATABASE_URL", str),
            "redis_url": ("REDIS_URL", str),
            "kafka_bootstrap_servers": ("KAFKA_BOOTSTRAP_SERVERS", str),
            "kafka_topic_prefix": ("KAFKA_TOPIC_PREFIX", str),
            "blob_backend": ("BLOB_BACKEND", _choice("local", "s3")),
            "blob_dir": ("BLOB_DIR", Path),
            "s3_endpoint_url": ("S3_ENDPOINT_URL", str),
            "s3_bucket": ("S3_BUCKET", str),
            "s3_region": ("S3_REGION", str),
            "http_host": ("HTTP_HOST", str),
            "http_port": ("HTTP_PORT", int),
            "max_body_bytes": ("MAX_BODY_BYTES", int),
            "auth_rate_limit_per_minute": ("AUTH_RATE_LIMIT_PER_MINUTE", int),
            "auth_account_rate_limit_per_hour": ("AUTH_ACCOUNT_RATE_LIMIT_PER_HOUR", int),
            "rate_limit_write_per_minute": ("RATE_LIMIT_WRITE_PER_MINUTE", int),
            "rate_limit_read_per_minute": ("RATE_LIMIT_READ_PER_MINUTE", int),
            "rate_limit_failure_mode": ("RATE_LIMIT_FAILURE_MODE", _choice("open", "closed")),
            "forwarded_allow_ips": ("FORWARDED_ALLOW_IPS", str),
            "jwt_algorithm": ("JWT_ALGORITHM", _choice("HS256", "RS256")),
            "jwt_secret": ("JWT_SECRET", str),
            "jwt_private_key_file": ("JWT_PRIVATE_KEY_FILE", Path),
            "jwt_public_key_file": ("JWT_PUBLIC_KEY_FILE", Path),
            "jwt_jwks_url": ("JWT_JWKS_URL", str),
            "jwt_issuer": ("JWT_ISSUER", str),
            "jwt_audience": ("JWT_AUDIENCE", str),
            "jwt_ttl_seconds": ("JWT_TTL_SECONDS", int),
            "relay_batch_size": ("RELAY_BATCH_SIZE", int),
            "relay_checkpoint_name": ("RELAY_CHECKPOINT_NAME", str),
            "projector_group_id": ("PROJECTOR_GROUP_ID", str),
            "projector_batch_size": ("PROJECTOR_BATCH_SIZE", int),
            "projector_session_timeout": ("PROJECTOR_SESSION_TIMEOUT", float),
            "cache_ttl_seconds": ("CACHE_TTL_SECONDS", int),
            "cache_absent_ttl_seconds": ("CACHE_ABSENT_TTL_SECONDS", int),
            "near_cache_entries": ("NEAR_CACHE_ENTRIES", int),
            "read_consistency_timeout": ("READ_CONSISTENCY_TIMEOUT", float),
            "metrics_host": ("METRICS_HOST", str),
            "metrics_port": ("METRICS_PORT", int),
            "disk_paths": ("METRICS_DISK_PATHS", _paths),
            "idempotency_secret": ("IDEMPOTENCY_SECRET", str),
            "idempotency_retention_hours": ("IDEMPOTENCY_RETENTION_HOURS", float),
            "idempotency_cleanup_interval_seconds": ("IDEMPOTENCY_CLEANUP_INTERVAL_SECONDS", float),
            "kafka_partitions": ("KAFKA_PARTITIONS", int),
            "kafka_replication_factor": ("KAFKA_REPLICATION_FACTOR", int),
            "kafka_min_insync_replicas": ("KAFKA_MIN_INSYNC_REPLICAS", int),
            "relay_log_check_interval": ("RELAY_LOG_CHECK_INTERVAL", float),
            "relay_batch_interval": ("RELAY_BATCH_INTERVAL", float),
            "relay_leader_retry_seconds": ("RELAY_LEADER_RETRY_SECONDS", float),
            "command_retries": ("COMMAND_RETRIES", int),
            "db_lock_timeout_ms": ("DB_LOCK_TIMEOUT_MS", int),
            "db_statement_timeout_ms": ("DB_STATEMENT_TIMEOUT_MS", int),
            "db_pool_timeout_seconds": ("DB_POOL_TIMEOUT_SECONDS", float),
            "http_request_timeout_seconds": ("HTTP_REQUEST_TIMEOUT_SECONDS", float),
            "worker_concurrency": ("WORKER_CONCURRENCY", int),
            "worker_group": ("WORKER_GROUP", str),
            "worker_lease_seconds": ("WORKER_LEASE_SECONDS", float),
            "worker_poll_seconds": ("WORKER_POLL_SECONDS", float),
            "worker_retry_base_seconds": ("WORKER_RETRY_BASE_SECONDS", float),
            "worker_retry_max_seconds": ("WORKER_RETRY_MAX_SECONDS", float),
            "worker_shutdown_grace_seconds": ("WORKER_SHUTDOWN_GRACE_SECONDS", float),
            "worker_metrics_port": ("WORKER_METRICS_PORT", int),
            "worker_session_timeout_ms": ("WORKER_SESSION_TIMEOUT_MS", int),
            "worker_fetch_max_wait_ms": ("WORKER_FETCH_MAX_WAIT_MS", int),
            "worker_modules": ("WORKER_MODULES", str),
            "worker_tail_submissions": ("WORKER_TAIL_SUBMISSIONS", _flag),
            "task_kinds_check": ("TASK_KINDS_CHECK", _flag),
            "blob_link_secret": ("BLOB_LINK_SECRET", str),
            "blob_link_ttl_seconds": ("BLOB_LINK_TTL_SECONDS", int),
            "webhook_allow_loopback": ("WEBHOOK_ALLOW_LOOPBACK", _flag),
            "webhook_timeout_seconds": ("WEBHOOK_TIMEOUT_SECONDS", float),
            "webhook_backoff_scale": ("WEBHOOK_BACKOFF_SCALE", float),
            "webhook_disable_after": ("WEBHOOK_DISABLE_AFTER", int),
            "webhook_secret_grace_seconds": ("WEBHOOK_SECRET_GRACE_SECONDS", int),
            "sse_heartbeat_seconds": ("SSE_HEARTBEAT_SECONDS", float),
            "sse_queue_events": ("SSE_QUEUE_EVENTS", int),
            "sse_poll_seconds": ("SSE_POLL_SECONDS", float),
            "http_shutdown_grace_seconds": ("HTTP_SHUTDOWN_GRACE_SECONDS", float),
        }
        for name, (var, cast) in casts.items():
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            try:
                values[name] = cast(raw)  # type: ignore[operator]
            except ValueError as exc:
                raise SettingsError(f"{var}={raw!r}: {exc}") from None
        if env.get("S3_ENDPOINT_URL") and "BLOB_BACKEND" not in env:
            values["blob_backend"] = "s3"
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    def to_env(self) -> dict[str, str]:
        """Environment variables that ``from_env`` turns back into these settings, for child
        processes: every setting that differs from its default, under its upper-cased name."""
        defaults = Settings(database_url=self.database_url)
        env = {"DATABASE_URL": self.database_url}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name not in ("database_url", "dev_mode") and value is not None and value != getattr(defaults, f.name):
                env[f.name.upper()] = os.pathsep.join(map(str, value)) if isinstance(value, tuple) else str(value)
        if self.dev_mode:
            env["TASKSTREAM_DEV_MODE"] = "1"
        return env

    def link_secret(self) -> bytes:
        """The key that signs local-store download links: BLOB_LINK_SECRET, else one derived
        from the JWT secret (so the dev stack needs nothing more); none without either."""
        import hashlib
        import hmac

        if self.blob_link_secret:
            return self.blob_link_secret.encode()
        if self.jwt_secret:
            return hmac.new(self.jwt_secret.encode(), b"taskstream blob links", hashlib.sha256).digest()
        raise SettingsError("local download links need BLOB_LINK_SECRET (or JWT_SECRET)")

    def topic_for(self, category: str) -> str:
        """Topic per category: ``events.user``, ``events.project``, ``events.task``."""
        return f"{self.kafka_topic_prefix}{category}"


def _paths(raw: str) -> tuple[Path, ...]:
    """A list of folders separated like PATH (``:`` on POSIX)."""
    return tuple(Path(p) for p in raw.split(os.pathsep) if p)


def _flag(raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _choice(*allowed: str):  # noqa: ANN202 - a small cast factory
    def cast(raw: str) -> str:
        if raw not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return raw

    return cast
