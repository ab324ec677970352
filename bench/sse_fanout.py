"""Event-stream fan-out: one shared tailer for N subscribers (event_store/tail.py) against the
baseline of N independent tails (``PostgresEventStore.subscribe`` each, what a naive SSE
endpoint would run per client), in the same run, over the same writes.

Setup: embedded PostgreSQL (fsync on), or DATABASE_URL. BENCH_SUBSCRIBERS (default 50)
subscribers follow the live tail while writers append BENCH_EVENTS (default 20,000) events
(4 concurrent writers, 10 events per append). Per run: events delivered per second (summed over
subscribers), delivery latency from the event's ``recorded_at`` (p50, p99), and the database
transactions the run cost (``pg_stat_database.xact_commit``, the writes included). Prints one
JSON line with both runs and the ratios.
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SUBSCRIBERS = int(os.environ.get("BENCH_SUBSCRIBERS", 50))
EVENTS = int(os.environ.get("BENCH_EVENTS", 20_000))
PER_APPEND = 10
WRITERS = 4


async def commits(store: Any) -> int:
    async with store.pool.connection() as conn:
        cur = await conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
        row = await cur.fetchone()
        return int(row[0])


async def write(store: Any, n_appends: int) -> None:
    from schemas.envelope import ANY, NewEvent

    for _ in range(n_appends):
        await store.append(f"task-{uuid.uuid4()}", ANY, [NewEvent("task.touched", {"i": i}) for i in range(PER_APPEND)])


async def run(store: Any, shared: bool) -> dict[str, Any]:
    from event_store.tail import EventFilter, EventHub

    start = await store.head_position()
    target = start + EVENTS  # positions are dense here: one writer process, no rollbacks
    latencies: list[float] = []
    delivered = 0
    ready = 0

    async def follow_hub(hub: EventHub[None]) -> None:
        nonlocal delivered, ready
        async with hub.subscription(None, EventFilter()) as subscription:
            await subscription.next(0.01)
            ready += 1
            while subscription.position < target:
                items = await subscription.next(1.0)
                now = time.time()
                delivered += len(items)
                latencies.extend(now - e.recorded_at.timestamp() for e, _ in items[:: max(1, len(items) // 5)])

    async def follow_own() -> None:
        nonlocal delivered, ready
        tail = store.subscribe(await store.head_position(), 500, poll_interval=1.0)
        ready += 1
        async for batch in tail:
            now = time.time()
            delivered += len(batch)
            latencies.extend(now - e.recorded_at.timestamp() for e in batch[:: max(1, len(batch) // 5)])
            if batch[-1].global_position >= target:
                await tail.aclose()
                return

    hub: EventHub[None] = EventHub(store, lambda _: None, queue_size=5000, poll_interval=1.0)
    followers = [asyncio.create_task(follow_hub(hub) if shared else follow_own()) for _ in range(SUBSCRIBERS)]
    while ready < SUBSCRIBERS:
        await asyncio.sleep(0.01)
    before = await commits(store)
    began = time.perf_counter()
    await asyncio.gather(*(write(store, EVENTS // PER_APPEND // WRITERS) for _ in range(WRITERS)))
    await asyncio.gather(*followers)
    elapsed = time.perf_counter() - began
    transactions = await commits(store) - before
    await hub.close()
    latencies.sort()
    return {
        "delivered_per_s": round(delivered / elapsed),
        "latency_p50_ms": round(statistics.median(latencies) * 1000, 1),
        "latency_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1),
        "db_transactions": transactions,
        "seconds": round(elapsed, 2),
    }


async def main(db_url: str) -> dict[str, Any]:
    from event_store.postgres import PostgresEventStore

    store = await PostgresEventStore.connect(db_url, min_size=4, max_size=40)
    try:
        baseline = await run(store, shared=False)
        shared = await run(store, shared=True)
    finally:
        await store.close()
    return {
        "bench": "sse_fanout",
        "subscribers": SUBSCRIBERS,
        "events": EVENTS,
        "shared_tailer": shared,
        "baseline_one_tail_each": baseline,
        "ratio_delivered": round(shared["delivered_per_s"] / baseline["delivered_per_s"], 2),
        "ratio_db_transactions": round(shared["db_transactions"] / baseline["db_transactions"], 3),
    }


if __name__ == "__main__":
    from taskstream import embedded
    from taskstream.migrate import upgrade

    started: list[embedded.ServerProcess] = []
    folder = Path(tempfile.mkdtemp(prefix="bench-sse-"))
    try:
        url = os.environ.get("DATABASE_URL")
        if not url:
            pg = embedded.start_postgres(folder / "pg", embedded.free_port(), fsync=True)
            started.append(pg)
            url = pg.url
        upgrade(url)
        print(json.dumps(asyncio.run(main(url))))
    finally:
        for server in started:
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)
