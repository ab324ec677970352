"""The ``taskstream`` command: one entry point per process of the system."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import sys
from pathlib import Path

from schemas.envelope import RecordedEvent
from taskstream.settings import Settings, SettingsError


def _settings() -> Settings:
    return Settings.from_env(dev_mode=os.environ.get("TASKSTREAM_DEV_MODE") == "1")


def _install_stop(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


def cmd_dev(args: argparse.Namespace) -> int:
    from taskstream.devstack import DevPorts, run

    return run(Path(args.home), DevPorts.from_env())


def cmd_migrate(args: argparse.Namespace) -> int:
    from taskstream import migrate

    settings = _settings()
    if args.downgrade:
        migrate.downgrade(settings.database_url, args.downgrade)
    else:
        migrate.upgrade(settings.database_url, args.revision)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from taskstream.wiring import build_gateway

    settings = _settings()
    app = build_gateway(settings)
    # The objects made at start-up live as long as the process: keep them out of the cyclic
    # collector's work, and collect young objects less often (fewer pauses in the tail latency).
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 10)
    uvicorn.run(
        app,
        host=args.host or settings.http_host,
        port=args.port or settings.http_port,
        proxy_headers=True,
        forwarded_allow_ips=args.forwarded_allow_ips,
        log_level="info",
        access_log=False,
    )
    return 0


def cmd_relay(_args: argparse.Namespace) -> int:
    from taskstream.wiring import run_relay

    async def main() -> None:
        stop = asyncio.Event()
        _install_stop(stop)
        await run_relay(_settings(), stop)

    asyncio.run(main())
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    """Mint a token with the configured key; in a dev checkout, with the dev stack's secret."""
    from gateway.auth import build_auth
    from taskstream.devstack import DEV_HOME, dev_secret_path

    overrides: dict[str, object] = {"database_url": os.environ.get("DATABASE_URL", "unused")}
    keyless = not any(os.environ.get(v) for v in ("JWT_SECRET", "JWT_PRIVATE_KEY_FILE"))
    secret_file = dev_secret_path(Path(os.environ.get("TASKSTREAM_HOME", DEV_HOME)))
    if keyless and secret_file.exists():
        overrides["jwt_secret"] = secret_file.read_text().strip()
    elif keyless:
        print("taskstream token: no signing key: set JWT_SECRET (or JWT_PRIVATE_KEY_FILE), or start `make dev` once", file=sys.stderr)
        return 2
    issuer, _ = build_auth(Settings.from_env(**overrides))
    if issuer is None:
        print("taskstream token: this configuration verifies tokens but holds no signing key", file=sys.stderr)
        return 2
    print(issuer.issue(args.user, args.role, ttl_seconds=args.ttl))
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    """Print events in global order as JSON lines, from a position; --follow keeps tailing.
    Private fields (a password hash) are left out, as on Kafka."""
    from event_store.postgres import PostgresEventStore
    from schemas.catalog import public_data

    def show(event: RecordedEvent) -> None:
        body = event.to_json()
        body["data"] = public_data(event.type, event.data)
        print(json.dumps(body), flush=True)

    async def main() -> None:
        store = await PostgresEventStore.connect(_settings().database_url, min_size=1, max_size=2)
        stop = asyncio.Event()
        _install_stop(stop)
        try:
            if not args.follow:
                position = args.after
                while batch := await store.read_all(position, 1000):
                    for event in batch:
                        show(event)
                    position = batch[-1].global_position
                return

            async def follow() -> None:
                subscription = store.subscribe(args.after)
                async with contextlib.aclosing(subscription):
                    async for batch in subscription:
                        for event in batch:
                            show(event)

            # Ctrl-C ends the wait for the next event too, not only a batch in progress.
            following, stopping = asyncio.create_task(follow()), asyncio.create_task(stop.wait())
            await asyncio.wait({following, stopping}, return_when=asyncio.FIRST_COMPLETED)
            for task in (following, stopping):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        finally:
            await store.close()

    asyncio.run(main())
    return 0


def cmd_work(args: argparse.Namespace) -> int:
    from taskstream.wiring import run_worker

    async def main() -> None:
        stop = asyncio.Event()
        _install_stop(stop)
        await run_worker(_settings(), stop, concurrency=args.concurrency, metrics_port=args.metrics_port)

    asyncio.run(main())
    return 0


def cmd_later(args: argparse.Namespace) -> int:
    print(f"taskstream {args.command}: not built yet (projections and workers come in later issues)", file=sys.stderr)
    return 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="taskstream", description="An event-sourced CQRS backend for tasks.")
    sub = p.add_subparsers(dest="command", required=True)
    dev = sub.add_parser("dev", help="run everything on embedded servers")
    dev.add_argument("--home", default=os.environ.get("TASKSTREAM_HOME", ".taskstream"), help="where the embedded servers keep their data")
    dev.set_defaults(func=cmd_dev)
    mig = sub.add_parser("migrate", help="upgrade (or downgrade) the database schema")
    mig.add_argument("--revision", default="head")
    mig.add_argument("--downgrade", metavar="REVISION")
    mig.set_defaults(func=cmd_migrate)
    serve = sub.add_parser("serve", help="run the HTTP gateway")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--forwarded-allow-ips", default="127.0.0.1", help="proxies trusted for X-Forwarded-*")
    serve.set_defaults(func=cmd_serve)
    sub.add_parser("relay", help="publish stored events to Kafka").set_defaults(func=cmd_relay)
    token = sub.add_parser("token", help="mint an access token (dev stack)")
    token.add_argument("--user", required=True)
    token.add_argument("--role", required=True, choices=["admin", "member", "analyst"])
    token.add_argument("--ttl", type=int, default=3600)
    token.set_defaults(func=cmd_token)
    tail = sub.add_parser("tail", help="print stored events as JSON lines")
    tail.add_argument("--after", type=int, default=0, help="global position to start after")
    tail.add_argument("--follow", action="store_true")
    tail.set_defaults(func=cmd_tail)
    work = sub.add_parser("work", help="run a worker of the task pool")
    work.add_argument("--concurrency", type=int, help="tasks at a time in this process (default WORKER_CONCURRENCY)")
    work.add_argument("--metrics-port", type=int, help="port of this worker's /metrics (default WORKER_METRICS_PORT; 0: none)")
    work.set_defaults(func=cmd_work)
    for later in ("project", "replay"):
        sub.add_parser(later, help="(not built yet)").set_defaults(func=cmd_later)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for noisy in ("alembic", "aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SettingsError as exc:
        print(f"taskstream {args.command}: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
