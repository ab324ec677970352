"""A real Prometheus (Debian's) scraping a running stack on loopback, with the committed alert
rules: every process (gateway, relay, projector, worker) is scraped, its metrics pass `promtool
check metrics`, the signals the alerts and dashboards use are there (queue depth, worker
utilisation, consumer lag of projector and workers from PostgreSQL, pool, disk), and after
errors are injected (the database starts refusing writes) the error-rate signal goes above its
threshold and the HighErrorRate alert goes pending.

The processes are `taskstream serve`, `relay`, `project` and `work` as an operator runs them,
over their own database (made read-only halfway through, so the session's database is untouched).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from gateway.auth import build_auth
from taskstream import embedded
from taskstream.migrate import upgrade
from taskstream.settings import Settings
from tests.support.tools import MONITORING, ROOT, run, tool

SCRAPE = "1s"


JOBS = ("gateway", "relay", "projector", "worker")


@dataclass(frozen=True)
class Stack:
    gateway: str
    metrics: dict[str, str]  # job -> its /metrics URL
    prometheus: str
    database_url: str
    admin_url: str  # the same database as a superuser (to make it refuse writes)
    jwt_secret: str


@pytest.fixture
def own_database(database_urls: dict[str, str]) -> Iterator[str]:
    """A database of its own, as the app role (made by tests.conftest.create_database)."""
    from tests.conftest import create_database

    url = create_database(database_urls)
    name = urlsplit(url).path.lstrip("/")
    try:
        yield url
    finally:
        with psycopg.connect(database_urls["admin"], autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def spawn(name: str, argv: list[str], log: Path, env: dict[str, str], port: int) -> embedded.ServerProcess:
    proc = embedded.spawn(name, argv, log, env=env, cwd=ROOT)
    return embedded.ServerProcess(name, f"http://127.0.0.1:{port}", port, proc, log)


@pytest.fixture
async def stack(own_database: str, database_urls: dict[str, str], redis_url: str, tansu_bootstrap: str, tmp_path: Path) -> AsyncIterator[Stack]:
    prometheus = tool("prometheus")
    tool("promtool")
    ports = {job: embedded.free_port() for job in JOBS}
    gateway_port, relay_port, prometheus_port = ports["gateway"], ports["relay"], embedded.free_port()
    secret = secrets.token_urlsafe(48)
    env = {
        **os.environ,
        "DATABASE_URL": own_database,
        "REDIS_URL": redis_url,
        "KAFKA_BOOTSTRAP_SERVERS": tansu_bootstrap,
        "KAFKA_TOPIC_PREFIX": f"prom{uuid.uuid4().hex[:8]}.",
        "JWT_SECRET": secret,
        "AUTH_RATE_LIMIT_PER_MINUTE": "0",
        "METRICS_PORT": str(relay_port),
        "METRICS_DISK_PATHS": str(tmp_path),
        "LOG_FORMAT": "json",
        "OTEL_TRACES_EXPORTER": "none",
        "PROJECTOR_SESSION_TIMEOUT": "3",
        "WORKER_SESSION_TIMEOUT_MS": "2000",
        "BLOB_DIR": str(tmp_path / "blobs"),
    }
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"global:\n  scrape_interval: {SCRAPE}\n  evaluation_interval: {SCRAPE}\n"
        f"rule_files:\n  - {MONITORING / 'alert-rules.yml'}\n"
        "scrape_configs:\n"
        + "".join(f"  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n" for job, port in ports.items())
    )
    cli = [sys.executable, "-m", "taskstream.cli"]
    started: list[embedded.ServerProcess] = []
    try:
        started.append(spawn("gateway", [*cli, "serve", "--port", str(gateway_port)], tmp_path / "gateway.log", env, gateway_port))
        started.append(spawn("relay", [*cli, "relay"], tmp_path / "relay.log", env, relay_port))
        started.append(spawn("projector", [*cli, "project"], tmp_path / "projector.log", {**env, "METRICS_PORT": str(ports["projector"])},
                             ports["projector"]))  # fmt: skip
        started.append(spawn("worker", [*cli, "work", "--concurrency", "3", "--metrics-port", str(ports["worker"])], tmp_path / "worker.log",
                             env, ports["worker"]))  # fmt: skip
        started.append(
            spawn(
                "prometheus",
                [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{prometheus_port}", "--log.level=warn"],
                tmp_path / "prometheus.log", env, prometheus_port,
            )  # fmt: skip
        )
        for server in started:
            await asyncio.to_thread(embedded.wait_until, lambda s=server: embedded.accepts(s.port), server, 60)
        yield Stack(f"http://127.0.0.1:{gateway_port}", {job: f"http://127.0.0.1:{port}/metrics" for job, port in ports.items()},
                    f"http://127.0.0.1:{prometheus_port}", own_database,
                    urlsplit(database_urls["admin"])._replace(path=urlsplit(own_database).path).geturl(), secret)  # fmt: skip
    finally:
        for server in reversed(started):
            server.stop()
        for server in started:  # what went wrong, if anything did
            print(f"--- {server.name}\n{server.log_tail(15)}")


async def query(client: httpx.AsyncClient, prometheus: str, expr: str) -> list[dict]:
    answer = await client.get(f"{prometheus}/api/v1/query", params={"query": expr})
    answer.raise_for_status()
    return list(answer.json()["data"]["result"])


async def value_of(client: httpx.AsyncClient, prometheus: str, expr: str) -> float | None:
    result = await query(client, prometheus, expr)
    return float(result[0]["value"][1]) if result else None


async def eventually(check, timeout: float = 60, every: float = 0.5):  # noqa: ANN001, ANN201 - a small poller
    async with asyncio.timeout(timeout):
        while not (found := await check()):
            await asyncio.sleep(every)
        return found


async def test_prometheus_scrapes_every_process_and_sees_the_error_rate(stack: Stack) -> None:
    settings = Settings(database_url=stack.database_url, jwt_secret=stack.jwt_secret)
    issuer, _ = build_auth(settings)
    assert issuer is not None
    async with httpx.AsyncClient(timeout=20) as client:
        # Every process is scraped, and what it serves is clean for promtool.
        for job in JOBS:
            assert await eventually(lambda job=job: query(client, stack.prometheus, f'up{{job="{job}"}} == 1'))
        for url in stack.metrics.values():
            body = (await client.get(url, follow_redirects=True)).content
            checked = run(tool("promtool"), "check", "metrics", stdin=body)
            assert checked.returncode == 0 and not checked.stdout.strip() and not checked.stderr.strip(), (url, checked)
        control = run(tool("promtool"), "check", "metrics", stdin=b"# HELP x_seconds_count x\n# TYPE x_seconds_count counter\nx_seconds_count 1\n")
        assert control.returncode != 0  # the check is not blind

        # Normal traffic: a user, projects, the API document.
        email = f"p{uuid.uuid4().hex[:10]}@example.org"
        answer = await client.post(f"{stack.gateway}/v1/users", json={"email": email, "display_name": "P", "password": "correct horse battery"})
        assert answer.status_code == 201, answer.text
        auth = {"Authorization": f"Bearer {issuer.issue(answer.json()['id'], 'member')}"}
        ratio = "taskstream:http_error_ratio:rate5m"

        async def healthy_traffic() -> list[dict]:
            answer = await client.post(f"{stack.gateway}/v1/projects", json={"name": f"ok-{uuid.uuid4().hex[:8]}"}, headers=auth)
            assert answer.status_code == 201, answer.text
            assert (await client.get(f"{stack.gateway}/openapi.json")).status_code == 200
            return await query(client, stack.prometheus, f"{ratio} == 0")  # traffic seen, no errors

        assert await eventually(healthy_traffic, every=0.2)
        assert await query(client, stack.prometheus, 'ALERTS{alertname="HighErrorRate"}') == []
        # The other processes' series arrived too (computed from PostgreSQL, read at scrape time).
        assert await value_of(client, stack.prometheus, 'taskstream_relay_lag_events{job="relay"}') is not None
        assert await value_of(client, stack.prometheus, 'taskstream_db_pool_connections{job="gateway",state="max"}') == 20
        assert await value_of(client, stack.prometheus, 'taskstream_disk_usage_ratio{job="relay"}') is not None
        # The projector's and the worker's signals: consumer lag from PostgreSQL, queue depth,
        # utilisation (busy / total slots), their pools and (the worker's blob folder) disk.
        signals = {
            'taskstream_projection_lag_events{job="projector",projection="tasks"}': None,
            'taskstream_db_pool_connections{job="projector",state="max"}': 6,
            "taskstream_task_queue_depth": 0,
            'taskstream_worker_consumer_lag_events{job="worker"}': 0,
            'taskstream_worker_consumer_lag_seconds{job="worker"}': 0,
            'sum(taskstream_worker_busy_slots{job="worker"}) / sum(taskstream_worker_slots{job="worker"})': 0,
            'sum(taskstream_worker_slots{job="worker"})': 3,
            'taskstream_db_pool_connections{job="worker",state="max"}': 7,
            'taskstream_disk_usage_ratio{job="worker"}': None,
        }
        for expr, expected in signals.items():
            async def seen(expr: str = expr, expected: float | None = expected) -> bool:
                value = await value_of(client, stack.prometheus, expr)
                return value is not None and (expected is None or value == expected)

            assert await eventually(seen), (expr, await value_of(client, stack.prometheus, expr))
        routes = {r["metric"]["route"] for r in await query(client, stack.prometheus, "taskstream_http_requests_total")}
        assert "/v1/projects" in routes and not any(uuid_like in r for r in routes for uuid_like in ("-4", "@"))

        # Inject errors: the database refuses writes from now on (new connections read-only,
        # the existing ones ended), so every project creation fails with 503.
        with psycopg.connect(stack.admin_url, autocommit=True) as conn:
            name = conninfo_to_dict(stack.database_url)["dbname"]
            conn.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (name,))

        statuses: list[int] = []

        async def failing_writes() -> list[dict]:
            for i in range(5):
                answer = await client.post(f"{stack.gateway}/v1/projects", json={"name": f"bad-{uuid.uuid4().hex[:6]}-{i}"}, headers=auth)
                statuses.append(answer.status_code)
            return await query(client, stack.prometheus, f"{ratio} > 0.05")

        (above,) = await eventually(failing_writes, timeout=90, every=0.2)
        assert float(above["value"][1]) > 0.05
        assert statuses.count(503) >= len(statuses) // 2, statuses  # the injected errors are 5xx answers
        pending = await eventually(lambda: query(client, stack.prometheus, 'ALERTS{alertname="HighErrorRate",alertstate="pending"}'))
        assert pending[0]["metric"]["severity"] == "critical"
