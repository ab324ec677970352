"""Read-model lag: from a write's acknowledgement to its new version being readable without a token.

Setup: embedded PostgreSQL (fsync on), Valkey and tansu (or DATABASE_URL, REDIS_URL and
KAFKA_BOOTSTRAP_SERVERS), the gateway, the relay and one projector as processes, as in
production. Writes are task submissions through HTTP (``POST /v1/projects/{id}/tasks``).

1. The maximum write rate: 64 connections in a closed loop for BENCH_SECONDS (default 5).
2. Half of it, open loop (a submission every 1/rate s, whatever the answers) for BENCH_SECONDS:
   for a sample of the writes (BENCH_SAMPLES_PER_S, default 25 a second), a poller GETs
   ``/v1/tasks/{id}`` without a token every 2 ms from the acknowledgement until it answers 200;
   the lag is that time. Goal: p99 <= 100 ms.
3. The maximum rate again (closed loop), sampled the same way, for 2 x BENCH_SECONDS: whether the
   lag stays bounded (the last third's p50 no worse than twice the first third's, plus 250 ms).

Baseline, in the same run: for the same sampled writes, the time from sending the write to the
event's arrival at a plain aiokafka consumer of the task topic (what the write and the log alone
cost; measured from the send because the log often has the event before the client has its
answer). ``ratio`` = send-to-readable p50 / send-to-log p50 at half rate. Prints one JSON line.

The load generator shares the two cores with the system it measures, so it is a lean one
(``_http_load.Client``: a protocol per keep-alive connection, on uvloop). With aiohttp it took
about a quarter of a core at half rate (~200 µs of CPU per request), taken from the servers.
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
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SECONDS = float(os.environ.get("BENCH_SECONDS", 5))
SAMPLES_PER_S = float(os.environ.get("BENCH_SAMPLES_PER_S", 25))
CONNECTIONS = 64
HOST = "127.0.0.1"
GOAL_P99_MS = 100.0
TASK = json.dumps({"kind": "echo", "payload": {"n": 1}}).encode()


class LogWatcher:
    """A plain consumer of the task topic: when each event id arrived."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.arrived: dict[str, float] = {}

    async def run(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=5)
        await consumer.start()
        try:
            partitions = [TopicPartition(self.topic, p) for p in sorted(consumer.partitions_for_topic(self.topic) or {0, 1, 2, 3})]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            while True:
                for messages in (await consumer.getmany(timeout_ms=50)).values():
                    now = time.perf_counter()
                    for m in messages:
                        self.arrived.setdefault(json.loads(m.value)["stream"], now)
        finally:
            await consumer.stop()


async def run_phase(client: Any, tasks_path: str, headers: dict[str, str], watcher: LogWatcher, *,
                    rate: float | None, seconds: float) -> dict[str, Any]:  # fmt: skip
    """Submissions to ``tasks_path`` at ``rate`` per second (None: closed loop at 64 connections); sampled lags."""
    from _http_load import request_bytes

    lags: list[tuple[float, float]] = []  # (ack time, lag ms)
    log_lags: list[float] = []  # from sending the write to the event's arrival on the log
    sent_lags: list[float] = []  # from sending the write to readable
    acked = 0
    errors = 0
    pollers: list[asyncio.Task[None]] = []
    every = max(1, int((rate or 1000) / SAMPLES_PER_S))
    host, port = client.host, client.port
    submission = request_bytes("POST", host, port, tasks_path, {**headers, "Content-Type": "application/json"}, TASK)

    async def poll(task_id: str, acked_at: float, sent_at: float) -> None:
        read = request_bytes("GET", host, port, f"/v1/tasks/{task_id}", headers)
        while time.perf_counter() - acked_at < 30:
            status, _ = await client.request(read)
            if status == 200:
                lags.append((acked_at, (time.perf_counter() - acked_at) * 1000))
                break
            await asyncio.sleep(0.002)
        stream = f"task-{task_id}"
        while stream not in watcher.arrived and time.perf_counter() - acked_at < 30:
            await asyncio.sleep(0.005)
        if stream in watcher.arrived:
            log_lags.append((watcher.arrived[stream] - sent_at) * 1000)
            sent_lags.append((acked_at - sent_at) * 1000 + lags[-1][1] if lags and lags[-1][0] == acked_at else float("nan"))

    async def submit(n: int) -> None:
        nonlocal acked, errors
        sent_at = time.perf_counter()
        try:
            status, body = await client.request(submission)
        except (ConnectionError, TimeoutError):
            errors += 1
            return
        if status != 202:
            errors += 1
            return
        acked += 1
        if n % every == 0:
            pollers.append(asyncio.create_task(poll(json.loads(body)["id"], time.perf_counter(), sent_at)))

    started = time.perf_counter()
    until = started + seconds
    if rate is None:
        counter = iter(range(10**9))

        async def closed() -> None:
            while time.perf_counter() < until:
                await submit(next(counter))

        await asyncio.gather(*(closed() for _ in range(CONNECTIONS)))
    else:
        inflight: list[asyncio.Task[None]] = []
        n = 0
        while (now := time.perf_counter()) < until:
            due = started + n / rate
            if due > now:
                await asyncio.sleep(due - now)
            inflight.append(asyncio.create_task(submit(n)))
            n += 1
        await asyncio.gather(*inflight)
    elapsed = time.perf_counter() - started
    await asyncio.gather(*pollers)
    values = sorted(lag for _, lag in lags)
    return {"write_rps": acked / elapsed, "errors": errors, "lags": lags, "log_lags": sorted(log_lags), "sorted": values,
            "sent_lags": sorted(v for v in sent_lags if v == v)}  # fmt: skip


def pct(values: list[float], q: float) -> float:
    return round(values[min(len(values) - 1, int(q * len(values)))], 2) if values else float("nan")


def main() -> int:
    import uvloop

    from _http_load import Client
    from http_write import gateway_setup
    from _servers import servers, start_system
    from taskstream import embedded

    def on_term(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    folder = Path(tempfile.mkdtemp(prefix="taskstream-bench-lag-"))
    started: list[embedded.ServerProcess] = []
    try:
        db_url, redis_url, kafka = servers(folder, started)
        base, env, gateway, prefix = start_system(folder, started, db_url, redis_url, kafka, host=HOST)

        async def bench() -> dict[str, Any]:
            tasks_url, headers = await gateway_setup(base, env)
            watcher = LogWatcher(kafka, f"{prefix}task")
            watching = asyncio.create_task(watcher.run())
            tasks = urlsplit(tasks_url)
            client = Client(HOST, tasks.port or 80)
            try:
                await run_phase(client, tasks.path, headers, watcher, rate=None, seconds=1)  # warm-up
                peak = await run_phase(client, tasks.path, headers, watcher, rate=None, seconds=SECONDS)
                half = await run_phase(client, tasks.path, headers, watcher, rate=peak["write_rps"] / 2, seconds=SECONDS)
                full = await run_phase(client, tasks.path, headers, watcher, rate=None, seconds=2 * SECONDS)
            finally:
                client.close()
                watching.cancel()
                await asyncio.gather(watching, return_exceptions=True)
            return {"peak": peak, "half": half, "full": full}

        phases = uvloop.run(bench())
        for server in started:
            if not server.alive():
                raise RuntimeError(f"{server.name} exited during the bench:\n{server.log_tail()}")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for server in reversed(started):
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    half, full = phases["half"], phases["full"]
    ordered = sorted(full["lags"])
    third = max(1, len(ordered) // 3)
    first_third = sorted(lag for _, lag in ordered[:third])
    last_third = sorted(lag for _, lag in ordered[-third:])
    bounded = bool(first_third and last_third and pct(last_third, 0.5) <= 2 * pct(first_third, 0.5) + 250)
    log_p50 = pct(half["log_lags"], 0.5)
    sent_p50 = pct(half["sent_lags"], 0.5)
    line = {
        "bench": "lag",
        "unit": "ms from the write's acknowledgement to readable without a token",
        "max_write_rps": round(phases["peak"]["write_rps"], 1),
        "half_rate_write_rps": round(half["write_rps"], 1),
        "half_rate_lag_p50_ms": pct(half["sorted"], 0.5),
        "half_rate_lag_p99_ms": pct(half["sorted"], 0.99),
        "half_rate_samples": len(half["sorted"]),
        "half_rate_send_to_readable_p50_ms": sent_p50,
        "baseline_send_to_log_p50_ms": log_p50,
        "baseline_send_to_log_p99_ms": pct(half["log_lags"], 0.99),
        "ratio": round(sent_p50 / log_p50, 3) if log_p50 and log_p50 == log_p50 else None,
        "goal": f"half_rate_lag_p99_ms <= {GOAL_P99_MS:.0f}",
        "goal_met": pct(half["sorted"], 0.99) <= GOAL_P99_MS,
        "max_rate_write_rps": round(full["write_rps"], 1),
        "max_rate_lag_p50_ms": pct(full["sorted"], 0.5),
        "max_rate_lag_p99_ms": pct(full["sorted"], 0.99),
        "max_rate_first_third_p50_ms": pct(first_third, 0.5),
        "max_rate_last_third_p50_ms": pct(last_third, 0.5),
        "max_rate_lag_bounded": bounded,
        "errors": half["errors"] + full["errors"] + phases["peak"]["errors"],
        "seconds": SECONDS,
        "cpus": os.cpu_count(),
    }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
