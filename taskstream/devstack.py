"""``taskstream dev``: the whole system on embedded real servers, in one foreground command.

Starts PostgreSQL, Valkey and tansu from their wheels (data under one project-local folder, so
a restart keeps the events), runs the migrations, then the gateway, the relay and one projector
(so what is written can be read back) as child processes. Ctrl-C, SIGTERM or the death of any
child stops everything it started, in reverse order; children also carry a parent-death signal, so a crash of this process leaves nothing.
tansu keeps its log in memory: after a restart the relay republishes from the events table.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from taskstream import dbroles, embedded
from taskstream.migrate import upgrade
from taskstream.settings import Settings


@dataclass(frozen=True, slots=True)
class DevPorts:
    """Defaults below 32768, outside Linux's ephemeral range (32768-60999): a port there can be
    held in TIME_WAIT by an outgoing connection the kernel gave it, and refuse a restart."""

    http: int = 8000
    postgres: int = 15432
    redis: int = 16379
    kafka: int = 19092
    relay_metrics: int = 9464  # /metrics of the relay (the gateway serves its own on http)
    projector_metrics: int = 9465  # /metrics of the projector
    worker_metrics: int = 9101  # and the next port: one /metrics per worker

    @classmethod
    def from_env(cls) -> DevPorts:
        def port(var: str, default: int) -> int:
            return int(os.environ.get(var, default))

        default = cls()
        return cls(
            http=port("TASKSTREAM_HTTP_PORT", default.http),
            postgres=port("TASKSTREAM_PG_PORT", default.postgres),
            redis=port("TASKSTREAM_REDIS_PORT", default.redis),
            kafka=port("TASKSTREAM_KAFKA_PORT", default.kafka),
            relay_metrics=port("TASKSTREAM_RELAY_METRICS_PORT", default.relay_metrics),
            projector_metrics=port("TASKSTREAM_PROJECTOR_METRICS_PORT", default.projector_metrics),
            worker_metrics=port("TASKSTREAM_WORKER_METRICS_PORT", default.worker_metrics),
        )


DEV_HOME = ".taskstream"


def dev_secret_path(home: Path) -> Path:
    return home / "jwt-secret"


def dev_secret(home: Path) -> str:
    """The dev stack's JWT secret: generated once, kept so tokens survive a restart."""
    path = dev_secret_path(home)
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


DEV_ADMIN_ID = "00000000-0000-4000-8000-000000000001"


class _Stop(Exception):
    pass


def run(home: Path, ports: DevPorts) -> int:
    home = home.resolve()
    try:  # every port before anything starts, so a clash leaves nothing half-started
        for name, port, var in (
            ("the gateway", ports.http, "TASKSTREAM_HTTP_PORT"),
            ("PostgreSQL", ports.postgres, "TASKSTREAM_PG_PORT"),
            ("Valkey", ports.redis, "TASKSTREAM_REDIS_PORT"),
            ("tansu", ports.kafka, "TASKSTREAM_KAFKA_PORT"),
            ("the relay's metrics", ports.relay_metrics, "TASKSTREAM_RELAY_METRICS_PORT"),
            ("the projector's metrics", ports.projector_metrics, "TASKSTREAM_PROJECTOR_METRICS_PORT"),
            ("worker 1's /metrics", ports.worker_metrics, "TASKSTREAM_WORKER_METRICS_PORT"),
            ("worker 2's /metrics", ports.worker_metrics + 1, "TASKSTREAM_WORKER_METRICS_PORT"),
        ):
            embedded.ensure_port_free(name, port, var)
    except embedded.PortInUse as exc:
        print(f"taskstream dev: {exc}", file=sys.stderr)
        return 1
    started: list[embedded.ServerProcess] = []

    def on_signal(signum: int, _frame: object) -> None:
        raise _Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        print("taskstream dev: starting PostgreSQL, Valkey and tansu ...", flush=True)
        pg = embedded.start_postgres(home / "postgres", ports.postgres)
        started.append(pg)
        valkey = embedded.start_valkey(home / "valkey", ports.redis)
        started.append(valkey)
        tansu = embedded.start_tansu(home / "tansu", ports.kafka)
        started.append(tansu)
        # Least privilege, as in production: migrations as the owner role, processes as the app role.
        dbroles.bootstrap(pg.url)
        owner_url, app_url = dbroles.role_url(pg.url, dbroles.OWNER_ROLE), dbroles.role_url(pg.url, dbroles.APP_ROLE)
        upgrade(owner_url)
        secret = dev_secret(home)
        env = {
            **os.environ,
            "DATABASE_URL": app_url,
            "MIGRATION_DATABASE_URL": owner_url,
            "REDIS_URL": valkey.url,
            "KAFKA_BOOTSTRAP_SERVERS": tansu.url,
            "BLOB_DIR": str(home / "blobs"),
            "HTTP_PORT": str(ports.http),
            "JWT_SECRET": secret,
            "TASKSTREAM_DEV_MODE": "1",
            # Logs for a person (same fields as the JSON lines), disk usage of the dev data.
            "LOG_FORMAT": os.environ.get("LOG_FORMAT", "text"),
            "METRICS_DISK_PATHS": str(home),
            "PROJECTOR_SESSION_TIMEOUT": "3",  # tansu's group join takes half the session timeout
            "WEBHOOK_ALLOW_LOOPBACK": "1",  # everything runs on this machine: local receivers work
            "TASK_KINDS_CHECK": "1",  # the gateway refuses kinds the workers do not know
        }
        cli = [sys.executable, "-m", "taskstream.cli"]
        children = (
            ("gateway", [*cli, "serve"], {}),
            ("relay", [*cli, "relay"], {"METRICS_PORT": str(ports.relay_metrics)}),
            ("projector", [*cli, "project"], {"METRICS_PORT": str(ports.projector_metrics)}),
        )
        for name, argv, own in children:
            proc = embedded.spawn(name, argv, home / "logs" / f"{name}.log", env={**env, **own})
            started.append(embedded.ServerProcess(name, "", 0, proc, home / "logs" / f"{name}.log"))
        gateway = next(s for s in started if s.name == "gateway")
        # The worker pool: the development row of the sizing table, 2 workers.
        for n in (1, 2):
            name, port = f"worker-{n}", ports.worker_metrics + n - 1
            argv = [*cli, "work", "--concurrency", "8", "--metrics-port", str(port)]
            proc = embedded.spawn(name, argv, home / "logs" / f"{name}.log", env=env)
            started.append(embedded.ServerProcess(name, "", port, proc, home / "logs" / f"{name}.log"))
        embedded.wait_until(lambda: embedded.accepts(ports.http), gateway, timeout=60)

        from gateway.auth import build_auth

        settings = Settings.from_env(env)
        issuer, _ = build_auth(settings)
        assert issuer is not None
        token = issuer.issue(DEV_ADMIN_ID, "admin", ttl_seconds=7 * 24 * 3600)
        print(
            f"\ntaskstream is running at http://127.0.0.1:{ports.http}\n"
            f"  PostgreSQL {app_url} (migrations: {owner_url})\n  Redis      {valkey.url}\n  Kafka      {tansu.url}\n"
            f"  metrics    http://127.0.0.1:{ports.http}/metrics (gateway), http://127.0.0.1:{ports.relay_metrics}/metrics (relay),"
            f" http://127.0.0.1:{ports.projector_metrics}/metrics (projector)\n"
            f"  workers    2, metrics at http://127.0.0.1:{ports.worker_metrics}/metrics and :{ports.worker_metrics + 1}\n"
            f"  logs       {home / 'logs'}\n\n"
            f"admin token (7 days):\n{token}\n\n"
            f"try: curl -H 'Authorization: Bearer <token>' http://127.0.0.1:{ports.http}/readyz\n"
            "Ctrl-C stops everything.",
            flush=True,
        )
        while True:
            for server in started:
                if not server.alive():
                    print(f"taskstream dev: {server.name} exited ({server.process.returncode}):\n{server.log_tail()}")
                    return 1
            time.sleep(0.5)
    except _Stop as stop:
        print(f"\ntaskstream dev: {stop}, stopping ...", flush=True)
        return 0
    except embedded.EmbeddedError as exc:
        print(f"taskstream dev: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for server in reversed(started):
            server.stop()
        print("taskstream dev: stopped", flush=True)
