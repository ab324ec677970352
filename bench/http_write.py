"""HTTP task submissions at 64 concurrent connections: the gateway beside a plain one-INSERT app.

Measured request: ``POST /v1/projects/{id}/tasks`` with a bearer token and a small JSON task,
answered 202 by the gateway (``python -m taskstream.cli serve``, one uvicorn worker process).
Baseline, measured in the same run against the same PostgreSQL: a minimal starlette app defined
in this file (``POST /tasks``: parse the JSON, one autocommit ``INSERT ... RETURNING id`` into a
plain table through a psycopg ``AsyncConnectionPool`` of BENCH_PLAIN_POOL connections (default
10, the event store's default pool size), answer 201 with the id), served the same way: uvicorn,
one worker process, same defaults (uvloop, httptools), no access log. It runs as a child mode of
this script: ``python bench/http_write.py --baseline-server PORT DATABASE_URL [POOL]``.

Load: 64 concurrent connections, 64 workers each posting in a loop for BENCH_SECONDS (default 5)
after BENCH_WARMUP seconds (default 1) of unrecorded warm-up; per-request latency is recorded.
Plain and gateway runs alternate BENCH_REPEATS times (default 3), so drift in machine load hits
both alike; figures are medians over the repeats. Any non-2xx answer or transport error counts
as an error; a run with errors is not valid (``valid`` false, exit status 1) and lists them.

Caveat: the load generator is Python, in this process, on the same 2-core machine as the server
process, PostgreSQL, Valkey and tansu. It takes CPU from the servers, so absolute requests/s are
lower than a separate load machine would see; the JSON reports the cores each side kept busy
(``*_cpu_cores``, from /proc) to show who was saturated. The client is BENCH_CLIENT:
``aiohttp`` (default when installed; it is in the ``dev`` extra) or ``httpx`` (64
AsyncClients of one connection each). httpx costs about 1.6 ms of client CPU per request, so
with it the client saturates a core at about 500 requests/s and caps the plain baseline there,
which inflates the ratio; aiohttp costs about a fifth of that.

Uses DATABASE_URL, REDIS_URL and KAFKA_BOOTSTRAP_SERVERS if all are set, else starts embedded
PostgreSQL (fsync on, as in production), Valkey and tansu in a temporary folder; migrations are
applied either way. The gateway gets a generated JWT_SECRET and TASKSTREAM_DEV_MODE=1. The relay
is not started.

Rate limiter cost: a second gateway process with every rate limit off (``nolimit_*``) is loaded
in the same alternation; the measured gateway has a write limit too high to refuse, so each
request pays the Redis round trip. ``limiter_cost_ms`` = 1000/gateway_rps - 1000/nolimit_rps,
the time per request the limiter adds at saturation; ``*_cpu_ms_per_request`` is the gateway
process's CPU per request with and without it (steadier on a shared machine);
``limiter_check_us`` is the median of sequential ``RedisRateLimiter.check`` calls in this
process (one EVALSHA round trip each).

Prints one JSON line: requests/s, p50 and p99 for both, ratio = gateway rps / plain rps,
goal = ratio >= 0.5 and gateway p99 <= 50 ms. Every child process is stopped at the end.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SECONDS = float(os.environ.get("BENCH_SECONDS", 5))
WARMUP = float(os.environ.get("BENCH_WARMUP", 1))
REPEATS = int(os.environ.get("BENCH_REPEATS", 3))
CONNECTIONS = 64
PLAIN_POOL = int(os.environ.get("BENCH_PLAIN_POOL", 10))
CLIENT = os.environ.get("BENCH_CLIENT") or ("aiohttp" if importlib.util.find_spec("aiohttp") else "httpx")
TASK = {"kind": "resize-image", "payload": {"url": "s3://b/k.png", "width": 640}, "priority": 5}
GOAL = "ratio >= 0.5 and gateway_p99_ms <= 50"
HOST = "127.0.0.1"


# --- the baseline app (child mode) ---------------------------------------------------------


def baseline_app(database_url: str, pool_size: int) -> Any:
    import contextlib

    from psycopg_pool import AsyncConnectionPool
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    pool = AsyncConnectionPool(
        database_url, min_size=pool_size, max_size=pool_size, kwargs={"autocommit": True}, open=False
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette):  # noqa: ANN202
        await pool.open(wait=True, timeout=30)
        try:
            yield
        finally:
            await pool.close()

    async def create(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"detail": "invalid JSON"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"detail": "expected an object"}, status_code=422)
        async with pool.connection() as conn:
            cur = await conn.execute("INSERT INTO bench_http_raw (data) VALUES (%s::jsonb) RETURNING id", (json.dumps(body),))
            row = await cur.fetchone()
        assert row is not None
        return JSONResponse({"id": row[0]}, status_code=201)

    return Starlette(routes=[Route("/tasks", create, methods=["POST"])], lifespan=lifespan)


def serve_baseline(port: int, database_url: str, pool_size: int) -> None:
    import uvicorn

    uvicorn.run(baseline_app(database_url, pool_size), host=HOST, port=port, log_level="warning", access_log=False)


# --- CPU accounting from /proc -------------------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """CPU (user + system) used by ``root`` and its live descendants, plus what they reaped.

    Descendants by parent pid, not by session: PostgreSQL's children call setsid() themselves.
    """
    parents: dict[int, int] = {}
    cpu: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()  # after "pid (comm) ": field 3 onwards
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        cpu[pid] = sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    total = 0
    for pid, ticks in cpu.items():
        ancestor = pid
        while ancestor > 1 and ancestor != root:
            ancestor = parents.get(ancestor, 0)
        if ancestor == root:
            total += ticks
    return total / _TICKS


# --- load generation -----------------------------------------------------------------------


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    statuses: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)


def pct(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Sender:
    """Posts one JSON body and returns the status (as text) or the transport error's name."""

    async def post_from(self, worker: int, url: str, body: bytes, headers: dict[str, str]) -> str: ...

    async def aclose(self) -> None: ...


class HttpxSender(Sender):
    """64 httpx.AsyncClients of one connection each: 64 connections in all.

    One client with a 64-connection pool would be the documented setup, but httpcore's pool
    rescans every connection for every queued request (``_assign_requests_to_connections``):
    with 64 requests in flight it spends its time there and delivers about 60 requests/s
    against a server that answers 500/s to a single connection. Separate clients avoid that.
    """

    def __init__(self) -> None:
        import httpx

        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        self._error = httpx.HTTPError
        self._clients = [httpx.AsyncClient(limits=limits, timeout=30.0) for _ in range(CONNECTIONS)]

    async def post_from(self, worker: int, url: str, body: bytes, headers: dict[str, str]) -> str:
        try:
            response = await self._clients[worker].post(url, content=body, headers=headers)
            return str(response.status_code)
        except self._error as exc:
            return type(exc).__name__

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()


class AiohttpSender(Sender):
    """One aiohttp session whose connector is limited to 64 connections (about 5x less client
    CPU per request than httpx, which matters when the client shares 2 cores with the server)."""

    def __init__(self) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=CONNECTIONS, limit_per_host=CONNECTIONS),
            timeout=aiohttp.ClientTimeout(total=30.0),
        )

    async def post_from(self, worker: int, url: str, body: bytes, headers: dict[str, str]) -> str:
        try:
            async with self._session.post(url, data=body, headers=headers) as response:
                await response.read()
                return str(response.status)
        except (self._aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return type(exc).__name__

    async def aclose(self) -> None:
        await self._session.close()


SENDERS = {"httpx": HttpxSender, "aiohttp": AiohttpSender}


async def load(url: str, headers: dict[str, str], *, server_pid: int, db_pid: int | None) -> Run:
    body = json.dumps(TASK).encode()
    headers = {**headers, "content-type": "application/json"}
    sender = SENDERS[CLIENT]()
    try:

        async def loop(worker: int, until: float, latencies: list[float] | None, statuses: dict[str, int]) -> None:
            while time.perf_counter() < until:
                start = time.perf_counter()
                key = await sender.post_from(worker, url, body, headers)
                if latencies is not None:
                    latencies.append((time.perf_counter() - start) * 1000)
                statuses[key] = statuses.get(key, 0) + 1

        warm: dict[str, int] = {}
        until = time.perf_counter() + WARMUP
        await asyncio.gather(*(loop(i, until, None, warm) for i in range(CONNECTIONS)))

        latencies: list[float] = []
        statuses: dict[str, int] = {}
        cpu_before = (time.process_time(), tree_cpu_seconds(server_pid), tree_cpu_seconds(db_pid) if db_pid else 0.0)
        start = time.perf_counter()
        until = start + SECONDS
        await asyncio.gather(*(loop(i, until, latencies, statuses) for i in range(CONNECTIONS)))
        elapsed = time.perf_counter() - start
        cpu_after = (time.process_time(), tree_cpu_seconds(server_pid), tree_cpu_seconds(db_pid) if db_pid else 0.0)
    finally:
        await sender.aclose()
    latencies.sort()
    errors = sum(n for key, n in statuses.items() if not (key.isdigit() and 200 <= int(key) < 300))
    cpu = {
        name: round((after - before) / elapsed, 2)
        for name, before, after in zip(("load_generator", "app_server", "postgres"), cpu_before, cpu_after)
    }
    if db_pid is None:
        cpu.pop("postgres")
    return Run(
        rps=len(latencies) / elapsed,
        p50_ms=pct(latencies, 0.50),
        p99_ms=pct(latencies, 0.99),
        requests=len(latencies),
        errors=errors,
        statuses=statuses,
        cpu=cpu,
    )


def summarize(runs: list[Run]) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    for run in runs:
        for key, n in run.statuses.items():
            statuses[key] = statuses.get(key, 0) + n
    return {
        "rps": round(statistics.median(r.rps for r in runs), 1),
        "p50_ms": round(statistics.median(r.p50_ms for r in runs), 2),
        "p99_ms": round(statistics.median(r.p99_ms for r in runs), 2),
        "requests": sum(r.requests for r in runs),
        "errors": sum(r.errors for r in runs),
        "statuses": statuses,
        "cpu_cores": {k: round(statistics.median(r.cpu[k] for r in runs), 2) for k in runs[0].cpu},
        "rps_runs": [round(r.rps, 1) for r in runs],
    }


# --- gateway setup through the API ---------------------------------------------------------


async def wait_ready(base: str, alive: Any, timeout: float = 60.0) -> None:
    """Poll /readyz until it is not 503 (a missing route counts as ready: the port is open)."""
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if not alive():
                raise RuntimeError("the gateway exited during start-up")
            try:
                response = await client.get(f"{base}/readyz")
                if response.status_code != 503:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"the gateway was not ready after {timeout:.0f} s")


async def gateway_setup(base: str, env: dict[str, str]) -> tuple[str, dict[str, str]]:
    """Create a user and a project through the API; return the task URL and the auth headers."""
    import httpx

    from gateway.auth import build_auth
    from taskstream.settings import Settings

    issuer, _ = build_auth(Settings.from_env(env))
    assert issuer is not None, "HS256 with JWT_SECRET always yields an issuer"
    suffix = uuid.uuid4().hex[:12]
    user = {"email": f"bench-{suffix}@example.com", "display_name": "HTTP bench", "password": secrets.token_urlsafe(18)}
    async with httpx.AsyncClient(base_url=base, timeout=30.0) as client:
        response = await client.post("/v1/users", json=user)
        if response.status_code in (401, 403):  # sign-up may be admin-only: ask as an admin
            admin = issuer.issue(str(uuid.uuid4()), "admin")
            response = await client.post("/v1/users", json=user, headers={"Authorization": f"Bearer {admin}"})
        if response.status_code != 201:
            raise RuntimeError(f"POST /v1/users answered {response.status_code}: {response.text[:500]}")
        user_id = str(response.json()["id"])
        headers = {"Authorization": f"Bearer {issuer.issue(user_id, 'member', ttl_seconds=6 * 3600)}"}
        response = await client.post("/v1/projects", json={"name": f"bench-{suffix}", "description": "HTTP write bench"}, headers=headers)
        if response.status_code != 201:
            raise RuntimeError(f"POST /v1/projects answered {response.status_code}: {response.text[:500]}")
        tasks_path = f"/v1/projects/{response.json()['id']}/tasks"
        response = await client.post(tasks_path, json=TASK, headers=headers)  # check the contract once
        missing = {"id", "stream", "version", "global_position"} - set(response.json() if response.status_code == 202 else {})
        if response.status_code != 202 or missing:
            raise RuntimeError(f"POST {tasks_path} answered {response.status_code} (missing {sorted(missing)}): {response.text[:500]}")
    return f"{base}{tasks_path}", headers


# --- orchestration -------------------------------------------------------------------------


async def measure(
    plain_url: str, plain_pid: int, gateway: tuple[str, dict[str, str], int], nolimit: tuple[str, dict[str, str], int], db_pid: int | None
) -> dict[str, Any]:
    url, headers, gateway_pid = gateway
    plain: list[Run] = []
    gw: list[Run] = []
    free: list[Run] = []
    for _ in range(REPEATS):  # alternate, so drift in machine load hits all alike
        plain.append(await load(plain_url, {}, server_pid=plain_pid, db_pid=db_pid))
        gw.append(await load(url, headers, server_pid=gateway_pid, db_pid=db_pid))
        free.append(await load(nolimit[0], nolimit[1], server_pid=nolimit[2], db_pid=db_pid))
    return {"plain": summarize(plain), "gateway": summarize(gw), "nolimit": summarize(free)}


async def limiter_check_us(redis_url: str, n: int = 2000) -> float:
    """Median time of one rate-limit check (one EVALSHA round trip), sequential, in microseconds."""
    from redis.asyncio import Redis

    from gateway.ratelimit import Policy, RedisRateLimiter

    client = Redis.from_url(redis_url)
    try:
        limiter, policy, who = RedisRateLimiter(client), Policy("bench", 10**9, 60), uuid.uuid4().hex
        times = []
        for _ in range(n):
            started = time.perf_counter()
            await limiter.check(policy, who)
            times.append(time.perf_counter() - started)
    finally:
        await client.aclose()
    return round(statistics.median(times[n // 10 :]) * 1e6, 1)


def main() -> int:
    from _servers import servers
    from taskstream import embedded

    if CLIENT not in SENDERS:
        print(f"BENCH_CLIENT must be one of {', '.join(SENDERS)}, not {CLIENT!r}", file=sys.stderr)
        return 2

    def on_term(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    folder = Path(tempfile.mkdtemp(prefix="taskstream-bench-http-"))
    started: list[embedded.ServerProcess] = []
    db_pid: int | None = None
    try:
        db_url, redis_url, kafka = servers(folder, started)
        db_pid = started[0].process.pid if started else None  # embedded PostgreSQL: its CPU is counted
        import psycopg

        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS bench_http_raw (id bigserial PRIMARY KEY, data jsonb NOT NULL)")

        plain_port = embedded.free_port()
        argv = [sys.executable, str(Path(__file__).resolve()), "--baseline-server", str(plain_port), db_url, str(PLAIN_POOL)]
        proc = embedded.spawn("plain app", argv, folder / "plain.log", cwd=ROOT)
        plain = embedded.ServerProcess("plain app", f"http://{HOST}:{plain_port}", plain_port, proc, folder / "plain.log")
        started.append(plain)
        embedded.wait_until(lambda: embedded.accepts(plain_port), plain, timeout=30)

        def start_gateway(name: str, limits: dict[str, str]) -> tuple[tuple[str, dict[str, str], int], dict[str, str]]:
            http_port = embedded.free_port()
            env = {
                **os.environ,
                "DATABASE_URL": db_url,
                "REDIS_URL": redis_url,
                "KAFKA_BOOTSTRAP_SERVERS": kafka,
                "HTTP_HOST": HOST,
                "HTTP_PORT": str(http_port),
                "JWT_SECRET": secrets.token_urlsafe(48),
                "TASKSTREAM_DEV_MODE": "1",
                "BLOB_DIR": str(folder / "blobs"),
                **limits,
            }
            log = folder / f"{name}.log"
            proc = embedded.spawn(name, [sys.executable, "-m", "taskstream.cli", "serve"], log, env=env, cwd=ROOT)
            gw = embedded.ServerProcess(name, f"http://{HOST}:{http_port}", http_port, proc, log)
            started.append(gw)
            embedded.wait_until(lambda: embedded.accepts(http_port), gw, timeout=60)
            try:
                asyncio.run(wait_ready(gw.url, gw.alive))
                url, headers = asyncio.run(gateway_setup(gw.url, env))
            except Exception:
                print(f"{name} log tail:\n{gw.log_tail()}", file=sys.stderr)
                raise
            return (url, headers, gw.process.pid), env

        # Limited: a write quota no run can reach, so every request pays the check, none is refused.
        gateway, _ = start_gateway("gateway", {"RATE_LIMIT_WRITE_PER_MINUTE": str(10**9)})
        nolimit, _ = start_gateway("gateway-nolimit", {"RATE_LIMIT_WRITE_PER_MINUTE": "0"})

        figures = asyncio.run(measure(plain.url + "/tasks", plain.process.pid, gateway, nolimit, db_pid))
        check_us = asyncio.run(limiter_check_us(redis_url))
        for server in started:
            if not server.alive():
                raise RuntimeError(f"{server.name} exited during the bench:\n{server.log_tail()}")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for server in reversed(started):
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    p, g, n = figures["plain"], figures["gateway"], figures["nolimit"]
    line: dict[str, Any] = {
        "bench": "http_write",
        "unit": "requests/s and ms (median of repeats)",
        "gateway_rps": g["rps"],
        "gateway_p50_ms": g["p50_ms"],
        "gateway_p99_ms": g["p99_ms"],
        "plain_rps": p["rps"],
        "plain_p50_ms": p["p50_ms"],
        "plain_p99_ms": p["p99_ms"],
        "ratio": round(g["rps"] / p["rps"], 3),
        "nolimit_rps": n["rps"],
        "nolimit_p50_ms": n["p50_ms"],
        "nolimit_p99_ms": n["p99_ms"],
        "limiter_cost_ms": round(1000 / g["rps"] - 1000 / n["rps"], 3),
        "limiter_check_us": check_us,
        # Server CPU per request (cores busy / requests per second): less sensitive to a noisy machine.
        "gateway_cpu_ms_per_request": round(1000 * g["cpu_cores"]["app_server"] / g["rps"], 3),
        "nolimit_cpu_ms_per_request": round(1000 * n["cpu_cores"]["app_server"] / n["rps"], 3),
        "goal": GOAL,
        "goal_met": False,
        "connections": CONNECTIONS,
        "gateway_errors": g["errors"],
        "plain_errors": p["errors"],
        "valid": p["errors"] == 0 and g["errors"] == 0 and n["errors"] == 0,
        "gateway_requests": g["requests"],
        "plain_requests": p["requests"],
        "gateway_rps_runs": g["rps_runs"],
        "plain_rps_runs": p["rps_runs"],
        "gateway_cpu_cores": g["cpu_cores"],
        "plain_cpu_cores": p["cpu_cores"],
        "nolimit_cpu_cores": n["cpu_cores"],
        "nolimit_rps_runs": n["rps_runs"],
        "client": CLIENT,
        "plain_pool": PLAIN_POOL,
        "seconds": SECONDS,
        "warmup": WARMUP,
        "repeats": REPEATS,
        "cpus": os.cpu_count(),
    }
    line["goal_met"] = bool(line["valid"] and line["ratio"] >= 0.5 and g["p99_ms"] <= 50)
    if p["errors"] or g["errors"] or n["errors"]:
        line["gateway_statuses"] = g["statuses"]
        line["plain_statuses"] = p["statuses"]
    print(json.dumps(line))
    return 0 if line["valid"] else 1


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "--baseline-server":
        serve_baseline(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else PLAIN_POOL)
    else:
        sys.exit(main())
