"""The ``taskstream`` command: one entry point per process of the system."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from taskstream.settings import Settings, SettingsError
from taskstream.telemetry import TelemetryError, configure_tracing, logging_from_env


def _settings() -> Settings:
    return Settings.from_env(dev_mode=os.environ.get("TASKSTREAM_DEV_MODE") == "1")


def _long_lived_process() -> None:
    """For a service process (gateway, relay, projector, worker), before its loop starts: the
    objects made so far (modules, settings, the app) live as long as the process, so they are
    kept out of the cyclic collector's work, and young objects are collected less often. At
    CPython's defaults (700, 10, 10) the projector spent about a third of a 200,000-event
    catch-up in the collector (44 full collections of 80-145 ms, each walking every row it
    keeps): 9,100 events/s, against 12,300 with these thresholds (bench/project.py)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 10)


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
    url = settings.migration_database_url or settings.database_url
    if args.downgrade:
        migrate.downgrade(url, args.downgrade)
    else:
        migrate.upgrade(url, args.revision)
    return 0


def cmd_db_roles(_args: argparse.Namespace) -> int:
    """Create the owner and app roles (run once, as an administrator: ADMIN_DATABASE_URL)."""
    from taskstream import dbroles

    admin = os.environ.get("ADMIN_DATABASE_URL")
    if not admin:
        print("taskstream db-roles: set ADMIN_DATABASE_URL to a role that may create roles", file=sys.stderr)
        return 2
    dbroles.bootstrap(
        admin,
        owner_password=os.environ.get("TASKSTREAM_OWNER_PASSWORD") or None,
        app_password=os.environ.get("TASKSTREAM_APP_PASSWORD") or None,
    )
    print(f"roles {dbroles.OWNER_ROLE} (migrations: MIGRATION_DATABASE_URL) and {dbroles.APP_ROLE} (DATABASE_URL) are ready")
    return 0


# The service name in logs and traces (OTEL_SERVICE_NAME overrides it in traces).
SERVICES = {"serve": "taskstream-gateway", "relay": "taskstream-relay", "project": "taskstream-projector", "work": "taskstream-worker"}


def service_name(command: str) -> str:
    return SERVICES.get(command, f"taskstream-{command}")


@contextlib.contextmanager
def _traced(command: str) -> Iterator[None]:
    """The process's tracer provider from the OTEL_* variables, flushed at exit."""
    provider = configure_tracing(service_name(command))
    try:
        yield
    finally:
        if provider is not None:
            provider.shutdown()


def cmd_serve(args: argparse.Namespace) -> int:
    from taskstream.wiring import build_gateway

    settings = _settings()
    with _traced("serve"):
        app = build_gateway(settings)
        _serve(app, args, settings)
    return 0


def _serve(app: object, args: argparse.Namespace, settings: Settings) -> None:
    import uvicorn

    from taskstream.wiring import gateway_server, uvicorn_options

    _long_lived_process()
    options = uvicorn_options(settings)
    options.update({k: v for k, v in {"host": args.host, "port": args.port, "forwarded_allow_ips": args.forwarded_allow_ips}.items() if v})
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        **options,  # type: ignore[arg-type]
        log_config=None,  # uvicorn logs through the root handler: the one format (telemetry)
        log_level="info",
        access_log=False,
    )
    server = gateway_server(config)  # as uvicorn.run, but it ends the event streams at shutdown
    server.run()
    if not server.started:
        sys.exit(3)  # uvicorn's STARTUP_FAILURE


def cmd_relay(_args: argparse.Namespace) -> int:
    from taskstream.wiring import run_relay

    async def main() -> None:
        stop = asyncio.Event()
        _install_stop(stop)
        await run_relay(settings, stop)

    settings = _settings()
    _long_lived_process()
    with _traced("relay"):
        asyncio.run(main())
    return 0


def cmd_project(args: argparse.Namespace) -> int:
    """The projector: the faust app that keeps the read models, until SIGTERM or Ctrl-C."""
    from taskstream.wiring import run_projector

    async def main() -> None:
        stop = asyncio.Event()
        _install_stop(stop)
        await run_projector(_settings(), stop, names=args.only or None)

    _long_lived_process()
    with _traced("project"):
        asyncio.run(main())
    return 0


def cmd_projection(args: argparse.Namespace) -> int:
    """Operators' view of parked events: ``failures`` lists them, ``retry`` applies a stream again."""
    from event_store.postgres import PostgresEventStore
    from projections.runtime import list_failures
    from taskstream.wiring import build_projectors

    async def main() -> int:
        settings = _settings()
        store = await PostgresEventStore.connect(settings.database_url, min_size=1, max_size=2)
        try:
            if args.action == "failures":
                for failure in await list_failures(store.pool, include_resolved=args.all, limit=args.limit):
                    print(json.dumps(failure), flush=True)
                return 0
            projector = build_projectors(settings, store, None, consumer="cli", names=[args.projection])[args.projection]
            outcome = await projector.retry_parked(args.stream)  # type: ignore[attr-defined]
            print(json.dumps({"stream": args.stream, "applied": outcome.applied, "parked_again": bool(outcome.parked)}))
            return 1 if outcome.parked else 0
        finally:
            await store.close()

    return asyncio.run(main())


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
    categories = args.categories.split(",") if args.categories else None
    print(issuer.issue(args.user, args.role, ttl_seconds=args.ttl, categories=categories))
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    """Print events in global order from a position, as JSON lines or a table (taskstream/tailing.py);
    --follow keeps tailing. Private fields (a password hash) are left out, as on Kafka."""
    from event_store.postgres import PostgresEventStore
    from event_store.tail import EventFilter
    from schemas.envelope import CATEGORIES
    from taskstream.tailing import printer, split_names, tail

    categories, types = split_names(args.category), split_names(args.type)
    unknown = sorted(set(categories or ()) - set(CATEGORIES))
    if unknown:
        print(f"taskstream tail: unknown categories {', '.join(unknown)} (known: {', '.join(CATEGORIES)})", file=sys.stderr)
        return 2
    where = EventFilter(frozenset(categories) if categories else None, frozenset(types) if types else None)
    fmt = args.format or ("table" if sys.stdout.isatty() else "json")

    async def main() -> None:
        store = await PostgresEventStore.connect(_settings().database_url, min_size=1, max_size=2)
        stop = asyncio.Event()
        _install_stop(stop)
        try:
            await tail(store, where, args.after, printer(fmt, sys.stdout), follow=args.follow, stop=stop)
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

    _long_lived_process()
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
    sub.add_parser("db-roles", help="create the owner and app database roles (as ADMIN_DATABASE_URL)").set_defaults(func=cmd_db_roles)
    serve = sub.add_parser("serve", help="run the HTTP gateway")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--forwarded-allow-ips", help="proxies trusted for X-Forwarded-* (default: FORWARDED_ALLOW_IPS, else 127.0.0.1)")
    serve.set_defaults(func=cmd_serve)
    sub.add_parser("relay", help="publish stored events to Kafka").set_defaults(func=cmd_relay)
    token = sub.add_parser("token", help="mint an access token (dev stack)")
    token.add_argument("--user", required=True)
    token.add_argument("--role", required=True, choices=["admin", "member", "analyst"])
    token.add_argument("--categories", help="comma-separated categories an analyst may read (default: all public ones)")
    token.add_argument("--ttl", type=int, default=3600)
    token.set_defaults(func=cmd_token)
    tail = sub.add_parser("tail", help="print stored events (JSON lines or a table), private fields left out")
    tail.add_argument("--from-position", "--after", dest="after", type=int, default=0, metavar="N", help="start after global position N (default 0)")
    tail.add_argument("--category", action="append", help="only this category (repeatable, or comma-separated)")
    tail.add_argument("--type", action="append", help="only this event type, e.g. task.submitted (repeatable, or comma-separated)")
    tail.add_argument("--format", choices=["json", "table"], help="default: table on a terminal, JSON lines otherwise")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new events until Ctrl-C")
    tail.set_defaults(func=cmd_tail)
    project = sub.add_parser("project", help="run the projector (read models) until stopped")
    project.add_argument("--only", action="append", choices=["users", "projects", "tasks"], help="project only these (repeatable)")
    project.set_defaults(func=cmd_project)
    projection = sub.add_parser("projection", help="parked events of the projections")
    projection.add_argument("action", choices=["failures", "retry"])
    projection.add_argument("stream", nargs="?", help="retry: the parked stream, e.g. task-<uuid>")
    projection.add_argument("--projection", choices=["users", "projects", "tasks"], help="retry: which read model")
    projection.add_argument("--all", action="store_true", help="failures: include resolved ones")
    projection.add_argument("--limit", type=int, default=100)
    projection.set_defaults(func=cmd_projection)
    work = sub.add_parser("work", help="run a worker of the task pool")
    work.add_argument("--concurrency", type=int, help="tasks at a time in this process (default WORKER_CONCURRENCY)")
    work.add_argument("--metrics-port", type=int, help="port of this worker's /metrics (default WORKER_METRICS_PORT; 0: none)")
    work.set_defaults(func=cmd_work)
    _add_replay_commands(sub)
    return p


# --- replay and verify ---------------------------------------------------------------------------


def _replay_models(choice: str) -> tuple[str, ...]:
    return ("users", "projects", "tasks") if choice == "all" else (choice,)


def _rfc3339(text: str) -> object:
    from datetime import datetime, timezone

    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 time: {text!r}") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset (write Z or +hh:mm)")
    return moment.astimezone(timezone.utc)


def _stop_flag() -> Callable[[], bool]:
    """SIGINT/SIGTERM set a flag the replay reads between chunks; a second SIGINT aborts."""
    stopping: list[bool] = []

    def on_signal(signum: int, _frame: object) -> None:
        if stopping and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stopping.append(True)
        print("taskstream replay: stopping at the next checkpoint (Ctrl-C again to abort)", file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return lambda: bool(stopping)


def cmd_replay(args: argparse.Namespace) -> int:
    """Rebuild read models from the events table and swap them in (or, with --until-*, build
    them as of then beside the live ones)."""
    from projections.replay import Request, discard
    from taskstream.progress import for_terminal
    from taskstream.wiring import replay_database_url, run_replay

    from projections.replay import ReplayBusy

    settings = _settings()
    if args.discard:
        try:
            dropped = discard(replay_database_url(settings), args.discard)
        except (LookupError, ValueError) as exc:
            print(f"taskstream replay: {exc}", file=sys.stderr)
            return 2
        print(json.dumps({"run": args.discard, "dropped": dropped}))
        return 0
    request = Request(models=_replay_models(args.projection), until_position=args.until_position, until_time=args.until_time,
                      parallel=not args.no_parallel)  # fmt: skip
    try:
        result = run_replay(settings, request, progress=for_terminal("replay"), stopped=_stop_flag())
    except ReplayBusy as exc:
        print(f"taskstream replay: {exc}", file=sys.stderr)
        return 1
    summary = {
        "run": result.run_id, "status": result.status, "tables": result.tables, "position": result.position,  # type: ignore[attr-defined]
        "events": result.events, "seconds": round(result.seconds, 2), "resumed": result.resumed,  # type: ignore[attr-defined]
        "failures": [vars(f) for f in result.failures], "locked_seconds": round(result.locked_seconds, 3),  # type: ignore[attr-defined]
    }  # fmt: skip
    print(json.dumps(summary), flush=True)
    if result.status == "interrupted":  # type: ignore[attr-defined]
        print("taskstream replay: interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    if result.status == "built":  # type: ignore[attr-defined]
        print(f"taskstream replay: built as of position {result.position} (not swapped): "  # type: ignore[attr-defined]
              f"{', '.join(result.tables.values())}; drop them with `taskstream replay --discard {result.run_id}`",  # type: ignore[attr-defined]
              file=sys.stderr)  # fmt: skip
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Compare the live read models with a fresh replay; exit 1 when a row differs."""
    from taskstream.progress import for_terminal
    from taskstream.wiring import run_verify

    reports = run_verify(_settings(), _replay_models(args.projection), progress=for_terminal("verify"), settle=args.settle)
    for report in reports:
        print(json.dumps(report.to_json()), flush=True)  # type: ignore[attr-defined]
    differing = [r.model for r in reports if not r.equal]  # type: ignore[attr-defined]
    if differing:
        print(f"taskstream verify: {', '.join(differing)} differ from a replay of the events", file=sys.stderr)
        return 1
    return 0


def _add_replay_commands(sub: Any) -> None:
    replay = sub.add_parser("replay", help="rebuild read models from the events table (blue/green swap)")
    replay.add_argument("--projection", choices=["users", "projects", "tasks", "all"], default="all")
    until = replay.add_mutually_exclusive_group()
    until.add_argument("--until-position", type=int, metavar="N", help="build as of this global position, beside the live tables")
    until.add_argument("--until-time", type=_rfc3339, metavar="T", help="build as of this RFC 3339 time, beside the live tables")
    replay.add_argument("--no-parallel", action="store_true", help="fold in this process only")
    replay.add_argument("--discard", metavar="RUN", help="drop the tables of a run that was not swapped")
    replay.set_defaults(func=cmd_replay)
    verify = sub.add_parser("verify", help="compare the live read models with a fresh replay")
    verify.add_argument("--projection", choices=["users", "projects", "tasks", "all"], default="all")
    verify.add_argument("--settle", type=float, default=5.0, help="seconds to let lagging live rows catch up")
    verify.set_defaults(func=cmd_verify)


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.command == "projection" and args.action == "retry" and not (args.stream and args.projection):
        p.error("projection retry needs a STREAM and --projection")
    try:
        logging_from_env(service_name(args.command))
    except TelemetryError as exc:
        print(f"taskstream {args.command}: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except (SettingsError, TelemetryError) as exc:
        print(f"taskstream {args.command}: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
