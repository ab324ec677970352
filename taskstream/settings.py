"""One frozen settings object, built from the environment in each entry point and passed down.

Tests build ``Settings`` directly. Secrets have no usable defaults outside the dev stack: the
gateway refuses to start without a JWT key unless ``dev_mode`` is set by ``taskstream dev``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

JwtAlgorithm = Literal["HS256", "RS256"]
BlobBackend = Literal["local", "s3"]


class SettingsError(ValueError):
    """The environment does not describe a usable configuration."""


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str
    redis_url: str = "redis://127.0.0.1:6379/0"
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_topic_prefix: str = "events."
    kafka_client_id: str = "taskstream"

    blob_backend: BlobBackend = "local"
    blob_dir: Path = Path(".taskstream/blobs")
    s3_endpoint_url: str | None = None
    s3_bucket: str = "taskstream"
    s3_region: str = "us-east-1"

    http_host: str = "127.0.0.1"
    http_port: int = 8000
    max_body_bytes: int = 1_048_576
    auth_rate_limit_per_minute: int = 30  # registrations and logins per client address; 0: off

    jwt_algorithm: JwtAlgorithm = "HS256"
    jwt_secret: str | None = field(default=None, repr=False)
    jwt_private_key_file: Path | None = None
    jwt_public_key_file: Path | None = None
    jwt_jwks_url: str | None = None
    jwt_issuer: str = "taskstream"
    jwt_audience: str = "taskstream-api"
    jwt_ttl_seconds: int = 3600

    relay_batch_size: int = 500
    relay_checkpoint_name: str = "relay"
    command_retries: int = 3
    dev_mode: bool = False

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

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        env = os.environ if env is None else env
        database_url = env.get("DATABASE_URL")
        if not database_url and "database_url" not in overrides:
            raise SettingsError("DATABASE_URL is not set")
        values: dict[str, object] = {"database_url": database_url}
        casts: dict[str, tuple[str, type | object]] = {
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
            "jwt_algorithm": ("JWT_ALGORITHM", _choice("HS256", "RS256")),
            "jwt_secret": ("JWT_SECRET", str),
            "jwt_private_key_file": ("JWT_PRIVATE_KEY_FILE", Path),
            "jwt_public_key_file": ("JWT_PUBLIC_KEY_FILE", Path),
            "jwt_jwks_url": ("JWT_JWKS_URL", str),
            "jwt_issuer": ("JWT_ISSUER", str),
            "jwt_audience": ("JWT_AUDIENCE", str),
            "jwt_ttl_seconds": ("JWT_TTL_SECONDS", int),
            "relay_batch_size": ("RELAY_BATCH_SIZE", int),
            "command_retries": ("COMMAND_RETRIES", int),
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
            "task_kinds_check": ("TASK_KINDS_CHECK", _flag),
            "blob_link_secret": ("BLOB_LINK_SECRET", str),
            "blob_link_ttl_seconds": ("BLOB_LINK_TTL_SECONDS", int),
            "webhook_allow_loopback": ("WEBHOOK_ALLOW_LOOPBACK", _flag),
            "webhook_timeout_seconds": ("WEBHOOK_TIMEOUT_SECONDS", float),
            "webhook_backoff_scale": ("WEBHOOK_BACKOFF_SCALE", float),
            "webhook_disable_after": ("WEBHOOK_DISABLE_AFTER", int),
            "webhook_secret_grace_seconds": ("WEBHOOK_SECRET_GRACE_SECONDS", int),
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
