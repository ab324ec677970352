"""Append throughput: one event per command, 1 and 16 concurrent writers, beside a raw ceiling.

Raw ceiling, measured in the same run on the same server: single-row INSERT per transaction
(autocommit) into a plain table from 8 psycopg connections, no lock, no concurrency check.
Each figure is the median of REPEATS runs of SECONDS each. Uses DATABASE_URL if set, else starts
an embedded PostgreSQL (fsync on, as in production) in a temporary folder.

Prints one JSON line: events/s for each case, ratio = 16 writers / raw ceiling, goal = 1.0.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402

from event_store.postgres import PostgresEventStore  # noqa: E402
from schemas.envelope import NO_STREAM, NewEvent  # noqa: E402

SECONDS = float(os.environ.get("BENCH_SECONDS", 3))
REPEATS = int(os.environ.get("BENCH_REPEATS", 3))
PAYLOAD = {"kind": "resize-image", "payload": {"url": "s3://bucket/key.png", "width": 640}, "priority": 5}


async def raw_ceiling(url: str, connections: int = 8) -> float:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_raw (id bigserial PRIMARY KEY, data jsonb NOT NULL)")
    payload = json.dumps(PAYLOAD)
    count = 0

    async def worker(deadline: float) -> None:
        nonlocal count
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            while time.perf_counter() < deadline:
                await conn.execute("INSERT INTO bench_raw (data) VALUES (%s::jsonb)", (payload,))
                count += 1

    deadline = time.perf_counter() + SECONDS
    start = time.perf_counter()
    await asyncio.gather(*(worker(deadline) for _ in range(connections)))
    return count / (time.perf_counter() - start)


async def store_appends(url: str, writers: int, *, notify: bool = True) -> float:
    store = await PostgresEventStore.connect(url, min_size=2, max_size=4, notify=notify)
    count = 0

    async def writer(deadline: float) -> None:
        nonlocal count
        stream = f"task-{uuid.uuid4()}"
        version = 0
        while time.perf_counter() < deadline:
            expected = version if version else NO_STREAM
            result = await store.append(stream, expected, [NewEvent("task.submitted", PAYLOAD)])
            version = result.version
            count += 1

    try:
        deadline = time.perf_counter() + SECONDS
        start = time.perf_counter()
        await asyncio.gather(*(writer(deadline) for _ in range(writers)))
        return count / (time.perf_counter() - start)
    finally:
        await store.close()


async def measure(url: str) -> dict[str, float]:
    runs: dict[str, list[float]] = {"raw_ceiling_8_connections": [], "writers_1": [], "writers_16": [], "writers_16_no_notify": []}
    for _ in range(REPEATS):  # interleaved, so drift in machine load hits every case alike
        runs["raw_ceiling_8_connections"].append(await raw_ceiling(url))
        runs["writers_1"].append(await store_appends(url, 1))
        runs["writers_16"].append(await store_appends(url, 16))
        runs["writers_16_no_notify"].append(await store_appends(url, 16, notify=False))
    return {name: round(statistics.median(values), 1) for name, values in runs.items()}


def main() -> None:
    url = os.environ.get("DATABASE_URL")
    server = None
    folder = None
    if not url:
        from taskstream import embedded
        from taskstream.migrate import upgrade

        folder = Path(tempfile.mkdtemp(prefix="taskstream-bench-"))
        server = embedded.start_postgres(folder / "pg", embedded.free_port(), fsync=True)
        url = server.url
        upgrade(url)
    try:
        figures = asyncio.run(measure(url))
    finally:
        if server is not None:
            server.stop()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    ratio = figures["writers_16"] / figures["raw_ceiling_8_connections"]
    print(
        json.dumps(
            {
                "bench": "append",
                "unit": "events/s (median)",
                **figures,
                "notify_cost": round(1 - figures["writers_16"] / figures["writers_16_no_notify"], 3),
                "ratio": round(ratio, 3),
                "goal": 1.0,
                "seconds": SECONDS,
                "repeats": REPEATS,
            }
        )
    )


if __name__ == "__main__":
    main()
