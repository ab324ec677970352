"""The ``taskstream`` command as an operator runs it: a real process, real servers."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

from event_store.postgres import PostgresEventStore
from gateway.auth import build_auth
from schemas.envelope import NO_STREAM, NewEvent
from taskstream.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def taskstream(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskstream.cli", *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env={k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None},
    )  # fmt: skip


async def test_token_mints_a_token_the_gateway_accepts() -> None:
    secret = uuid.uuid4().hex * 2
    done = await asyncio.to_thread(taskstream, "token", "--user", "u-1", "--role", "analyst", env={"JWT_SECRET": secret, "DATABASE_URL": ""})
    assert done.returncode == 0, done.stderr
    _, verifier = build_auth(Settings(database_url="unused", jwt_secret=secret))
    principal = await verifier.verify(done.stdout.strip())
    assert (principal.subject, principal.role) == ("u-1", "analyst")


async def test_token_without_any_key_says_how_to_get_one(tmp_path: Path) -> None:
    env = {"JWT_SECRET": "", "JWT_PRIVATE_KEY_FILE": "", "TASKSTREAM_HOME": str(tmp_path)}
    done = await asyncio.to_thread(taskstream, "token", "--user", "u", "--role", "admin", env=env)
    assert done.returncode == 2 and "JWT_SECRET" in done.stderr


async def test_migrate_is_idempotent_and_tail_prints_events(store: PostgresEventStore, database_url: str, owner_database_url: str) -> None:
    done = await asyncio.to_thread(taskstream, "migrate", env={"DATABASE_URL": database_url, "MIGRATION_DATABASE_URL": owner_database_url})
    assert done.returncode == 0, done.stderr
    start = await store.head_position()
    stream = f"task-{uuid.uuid4()}"
    await store.append(stream, NO_STREAM, [NewEvent("task.touched", {"i": i}) for i in range(3)])
    done = await asyncio.to_thread(taskstream, "tail", "--after", str(start), env={"DATABASE_URL": database_url})
    assert done.returncode == 0, done.stderr
    printed = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(e["stream"], e["data"]["i"]) for e in printed if e["stream"] == stream] == [(stream, 0), (stream, 1), (stream, 2)]


async def test_dev_refuses_a_taken_port_before_starting_anything(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"TASKSTREAM_PG_PORT": str(port), "TASKSTREAM_HTTP_PORT": "0"}
        done = await asyncio.to_thread(taskstream, "dev", "--home", str(tmp_path / "home"), env=env)
    assert done.returncode == 1
    assert f"127.0.0.1:{port} is already in use" in done.stderr and "TASKSTREAM_PG_PORT" in done.stderr
    assert not (tmp_path / "home" / "postgres").exists()


async def test_a_missing_database_url_is_a_clear_error() -> None:
    done = await asyncio.to_thread(taskstream, "migrate", env={"DATABASE_URL": ""})
    assert done.returncode == 2 and "DATABASE_URL is not set" in done.stderr


async def test_tail_follow_stops_on_ctrl_c_while_waiting(database_url: str) -> None:
    import signal

    proc = subprocess.Popen(
        [sys.executable, "-m", "taskstream.cli", "tail", "--follow", "--after", "0"],
        cwd=ROOT, env={**os.environ, "DATABASE_URL": database_url}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await asyncio.sleep(2.5)  # connected, caught up, now waiting for new events
        proc.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(proc.wait, 10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_dev_runs_everything_keeps_data_across_a_restart_and_leaves_nothing(tmp_path: Path) -> None:
    import signal

    import httpx

    from taskstream import embedded

    home = tmp_path / "home"
    ports = {name: embedded.free_port() for name in ("HTTP", "PG", "REDIS", "KAFKA", "RELAY_METRICS", "PROJECTOR_METRICS", "WORKER_METRICS")}
    env = {**os.environ, **{f"TASKSTREAM_{name}_PORT": str(port) for name, port in ports.items()}}
    base = f"http://127.0.0.1:{ports['HTTP']}"
    credentials = {"email": f"dev-{uuid.uuid4().hex[:8]}@example.org", "password": "password-1"}

    async def run_once(action):  # noqa: ANN001, ANN202
        proc = subprocess.Popen(
            [sys.executable, "-m", "taskstream.cli", "dev", "--home", str(home)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        try:
            lines: list[str] = []
            while not any("Ctrl-C stops everything" in line for line in lines):
                line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 90)
                assert line, "taskstream dev exited early:\n" + "".join(lines)
                lines.append(line)
            token = lines[lines.index("admin token (7 days):\n") + 1].strip()
            async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                assert (await client.get("/readyz")).status_code == 200
                await action(client, token)
            proc.send_signal(signal.SIGINT)
            assert await asyncio.to_thread(proc.wait, 60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()

    async def register(client: httpx.AsyncClient, token: str) -> None:
        body = {**credentials, "display_name": "Dev"}
        assert (await client.post("/v1/users", json=body, headers={"Authorization": f"Bearer {token}"})).status_code == 201
        # Every process serves /metrics; the logs are for a person, not JSON.
        assert "taskstream_http_requests_total" in (await client.get("/metrics")).text
        relay_metrics = (await client.get(f"http://127.0.0.1:{ports['RELAY_METRICS']}/metrics")).text
        assert "taskstream_relay_lag_events" in relay_metrics and f'taskstream_disk_usage_ratio{{path="{home.resolve()}"}}' in relay_metrics
        relay_log = (home / "logs" / "relay.log").read_text().splitlines()
        assert any("relay publishing from position" in line for line in relay_log)
        assert not any(line.startswith("{") for line in relay_log)
        await run_a_task(client, token)

    async def run_a_task(client: httpx.AsyncClient, token: str) -> None:
        """The dev stack's workers run tasks (and refuse kinds no worker knows)."""
        auth = {"Authorization": f"Bearer {token}"}
        project = (await client.post("/v1/projects", json={"name": "dev"}, headers=auth)).json()["id"]
        assert (await client.post(f"/v1/projects/{project}/tasks", json={"kind": "no.such"}, headers=auth)).status_code == 422
        submitted = await client.post(f"/v1/projects/{project}/tasks", json={"kind": "echo", "payload": {"hi": 1}}, headers=auth)
        async with asyncio.timeout(60):
            while (result := await client.get(f"/v1/tasks/{submitted.json()['id']}/result", headers=auth)).status_code != 200:
                await asyncio.sleep(0.2)
        assert result.json()["result"] == {"hi": 1}

    async def log_in(client: httpx.AsyncClient, _token: str) -> None:
        assert (await client.post("/v1/auth/token", json=credentials)).status_code == 200

    await run_once(register)
    await run_once(log_in)  # the events survived the restart
    for port in ports.values():  # and every server stopped with the supervisor
        assert not embedded.accepts(port)


async def test_relay_logs_json_lines_and_serves_metrics(database_url: str, tansu_bootstrap: str, tmp_path: Path) -> None:
    """`taskstream relay` as deployed: JSON-line logs on stderr, /metrics on METRICS_PORT."""
    import signal

    import httpx

    from taskstream import embedded

    port = embedded.free_port()
    env = {
        **os.environ, "DATABASE_URL": database_url, "KAFKA_BOOTSTRAP_SERVERS": tansu_bootstrap,
        "KAFKA_TOPIC_PREFIX": f"cli{uuid.uuid4().hex[:8]}.", "METRICS_PORT": str(port),
        "METRICS_DISK_PATHS": str(tmp_path), "LOG_FORMAT": "json", "OTEL_TRACES_EXPORTER": "none",
    }  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "taskstream.cli", "relay"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            for _ in range(200):
                try:
                    body = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("the relay never served /metrics")
        for name in ("taskstream_relay_lag_events", "taskstream_relay_lag_seconds_bucket", "taskstream_db_pool_connections", "taskstream_disk_usage_ratio", "process_resident_memory_bytes"):
            assert name in body, name
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.to_thread(proc.communicate, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    assert lines and all(line["service"] == "taskstream-relay" and line["level"] and line["time"] for line in lines)
    assert any(line["message"] == f"relay metrics at http://127.0.0.1:{port}/metrics" for line in lines)
    assert not embedded.accepts(port)  # the metrics server stopped with the process


async def test_an_unknown_log_format_is_a_configuration_error() -> None:
    done = await asyncio.to_thread(taskstream, "token", "--user", "u", "--role", "admin", env={"LOG_FORMAT": "xml", "JWT_SECRET": "x" * 40})
    assert done.returncode == 2 and "LOG_FORMAT='xml'" in done.stderr and "json or text" in done.stderr
