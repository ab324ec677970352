"""Reads by id at 64 concurrent connections, cache hits: the gateway beside a plain one-Redis-GET app.

Measured request: ``GET /v1/tasks/{id}`` with a bearer token, answered 200 by the gateway
(``python -m taskstream.cli serve``, one uvicorn worker process) for a task already projected
and cached, so it is served from the near-cache (the caller, the task and its project). The
relay and a projector run beside it, as in production.

Baseline, measured in the same run: a minimal starlette app defined in this file
(``GET /tasks/{id}``: one Redis GET of the same cached entry through redis.asyncio, answered as
JSON), served the same way (uvicorn, one worker, same defaults, no access log). It runs as a
child mode of this script: ``python bench/read.py --baseline-server PORT REDIS_URL KEY``.

Load: 64 concurrent keep-alive connections, one request in flight on each (closed loop, as
wrk), for BENCH_SECONDS (default 5) after BENCH_WARMUP (default 1) seconds; plain and gateway
alternate BENCH_REPEATS times (default 3); figures are medians over the repeats. Any non-200
answer counts as an error and invalidates the run. The load generator shares the 2 cores with
the servers, so it is a lean one (``bench/_http_load.py``: a protocol per connection, on uvloop
like the servers, about a fifth of aiohttp's CPU per request): a client library's 80-140 µs per
request would come out of the servers' share and pull any ratio towards 1.

Prints one JSON line: requests/s, p50 and p99 for both, ratio = gateway rps / plain rps, goal
ratio >= 1.5 (the near-cache answers without a network round trip), the gateway's cache
counters (near-cache hits must dominate), and CPU: cores used by the load generator and by each
server (its process tree; the plain app's Redis is not in it), and the same as µs per request
(median over the repeats of each run's CPU / requests), the figure least moved by other work on
the machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SECONDS = float(os.environ.get("BENCH_SECONDS", 5))
WARMUP = float(os.environ.get("BENCH_WARMUP", 1))
REPEATS = int(os.environ.get("BENCH_REPEATS", 3))
CONNECTIONS = 64
HOST = "127.0.0.1"
GOAL = 1.5


def baseline_app(redis_url: str, key: str) -> Any:
    import contextlib

    from redis.asyncio import Redis
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    redis = Redis.from_url(redis_url, max_connections=64)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette):  # noqa: ANN202
        try:
            yield
        finally:
            await redis.aclose()

    async def get(request: Request) -> Response:
        raw = await redis.get(key)
        if raw is None:
            return Response(b'{"detail":"not found"}', status_code=404, media_type="application/json")
        return Response(raw.partition(b":")[2], media_type="application/json")

    return Starlette(routes=[Route("/tasks/{task_id}", get, methods=["GET"])], lifespan=lifespan)


def serve_baseline(port: int, redis_url: str, key: str) -> None:
    import uvicorn

    uvicorn.run(baseline_app(redis_url, key), host=HOST, port=port, log_level="warning", access_log=False)


async def load(url: str, headers: dict[str, str], server_pid: int) -> dict[str, Any]:
    from urllib.parse import urlsplit

    from _http_load import Tally, request_bytes, run
    from http_write import pct, tree_cpu_seconds

    parts = urlsplit(url)
    host, port = parts.hostname or HOST, parts.port or 80
    request = request_bytes("GET", host, port, parts.path, headers)
    tally = Tally()
    await run(host, port, request, CONNECTIONS, WARMUP, tally)
    tally.record = True
    cpu_before = (time.process_time(), tree_cpu_seconds(server_pid))
    start = time.perf_counter()
    await run(host, port, request, CONNECTIONS, SECONDS, tally)
    elapsed = time.perf_counter() - start
    cpu_after = (time.process_time(), tree_cpu_seconds(server_pid))
    latencies = sorted(tally.latencies_ms)
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": pct(latencies, 0.5),
        "p99_ms": pct(latencies, 0.99),
        "errors": sum(n for k, n in tally.statuses.items() if k != "200"),
        "statuses": tally.statuses,
        "cpu": {"load_generator": (cpu_after[0] - cpu_before[0]) / elapsed, "app_server": (cpu_after[1] - cpu_before[1]) / elapsed},
        "cpu_us": {"load_generator": (cpu_after[0] - cpu_before[0]) / max(1, len(latencies)) * 1e6,
                   "app_server": (cpu_after[1] - cpu_before[1]) / max(1, len(latencies)) * 1e6},
    }


async def setup(base: str, env: dict[str, str]) -> tuple[str, dict[str, str], str]:
    """A project and a task through the API, read back once (with its token) and then without
    one until it answers 200, so that it is cached. Returns the task path, headers and task id."""
    import httpx

    from http_write import gateway_setup

    tasks_url, headers = await gateway_setup(base, env)
    async with httpx.AsyncClient(timeout=30.0) as client:
        submitted = await client.post(tasks_url, json={"kind": "echo", "payload": {"n": 1}}, headers=headers)
        task_id = submitted.json()["id"]
        token = submitted.headers["Consistency-Token"]
        answer = await client.get(f"{base}/v1/tasks/{task_id}", params={"consistency_token": token}, headers=headers)
        if answer.status_code != 200:
            raise RuntimeError(f"GET /v1/tasks/{task_id} with the token answered {answer.status_code}: {answer.text[:300]}")
        deadline = time.monotonic() + 30
        while (await client.get(f"{base}/v1/tasks/{task_id}", headers=headers)).status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the task never became readable without a token")
            await asyncio.sleep(0.05)
    return f"/v1/tasks/{task_id}", headers, task_id


def cache_counters(metrics: str) -> dict[str, float]:
    out = {}
    for line in metrics.splitlines():
        if line.startswith("taskstream_cache_requests_total{"):
            label = line.split('result="')[1].split('"')[0]
            out[label] = float(line.rsplit(" ", 1)[1])
    return out


def main() -> int:
    import httpx

    from _servers import servers, start_system
    from taskstream import embedded

    def on_term(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    folder = Path(tempfile.mkdtemp(prefix="taskstream-bench-read-"))
    started: list[embedded.ServerProcess] = []
    try:
        db_url, redis_url, kafka = servers(folder, started)
        base, env, gateway, _ = start_system(folder, started, db_url, redis_url, kafka, host=HOST)
        path, headers, task_id = asyncio.run(setup(base, env))

        plain_port = embedded.free_port()
        argv = [sys.executable, str(Path(__file__).resolve()), "--baseline-server", str(plain_port), redis_url, f"ts:rm:tasks:{task_id}"]
        proc = embedded.spawn("plain app", argv, folder / "plain.log", cwd=ROOT)
        plain = embedded.ServerProcess("plain app", "", plain_port, proc, folder / "plain.log")
        started.append(plain)
        embedded.wait_until(lambda: embedded.accepts(plain_port), plain, timeout=30)

        async def measure() -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, float]]:
            plain_runs, gateway_runs = [], []
            for _ in range(REPEATS):
                plain_runs.append(await load(f"http://{HOST}:{plain_port}/tasks/{task_id}", {}, plain.process.pid))
                gateway_runs.append(await load(base + path, headers, gateway.process.pid))
            async with httpx.AsyncClient() as client:
                counters = cache_counters((await client.get(base + "/metrics")).text)
            return plain_runs, gateway_runs, counters

        import uvloop

        plain_runs, gateway_runs, counters = uvloop.run(measure())
        for server in started:
            if not server.alive():
                raise RuntimeError(f"{server.name} exited during the bench:\n{server.log_tail()}")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for server in reversed(started):
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def median(runs: list[dict[str, Any]], key: str) -> float:
        return round(statistics.median(r[key] for r in runs), 2)

    errors = sum(r["errors"] for r in plain_runs + gateway_runs)
    ratio = median(gateway_runs, "rps") / median(plain_runs, "rps")
    line = {
        "bench": "read",
        "unit": "requests/s and ms (median of repeats)",
        "gateway_rps": median(gateway_runs, "rps"),
        "gateway_p50_ms": median(gateway_runs, "p50_ms"),
        "gateway_p99_ms": median(gateway_runs, "p99_ms"),
        "plain_redis_get_rps": median(plain_runs, "rps"),
        "plain_p50_ms": median(plain_runs, "p50_ms"),
        "plain_p99_ms": median(plain_runs, "p99_ms"),
        "ratio": round(ratio, 3),
        "goal": f"ratio >= {GOAL}",
        "goal_met": errors == 0 and ratio >= GOAL,
        "gateway_rps_runs": [round(r["rps"], 1) for r in gateway_runs],
        "plain_rps_runs": [round(r["rps"], 1) for r in plain_runs],
        "gateway_cache_requests": counters,
        "gateway_cpu_cores": {k: round(statistics.median(r["cpu"][k] for r in gateway_runs), 2) for k in ("load_generator", "app_server")},
        "plain_cpu_cores": {k: round(statistics.median(r["cpu"][k] for r in plain_runs), 2) for k in ("load_generator", "app_server")},
        "gateway_cpu_us_per_request": {k: round(statistics.median(r["cpu_us"][k] for r in gateway_runs), 1) for k in ("load_generator", "app_server")},
        "plain_cpu_us_per_request": {k: round(statistics.median(r["cpu_us"][k] for r in plain_runs), 1) for k in ("load_generator", "app_server")},
        "errors": errors,
        "connections": CONNECTIONS,
        "seconds": SECONDS,
        "repeats": REPEATS,
        "cpus": os.cpu_count(),
    }
    if errors:
        line["statuses"] = {"gateway": [r["statuses"] for r in gateway_runs], "plain": [r["statuses"] for r in plain_runs]}
    print(json.dumps(line))
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    if len(sys.argv) >= 5 and sys.argv[1] == "--baseline-server":
        serve_baseline(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        sys.exit(main())
