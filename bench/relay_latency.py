"""Relay latency at rest: from an append's commit to the broker's acknowledgement of the event.

Baseline, measured in the same run against the same broker: a direct aiokafka
``send_and_wait`` of the same JSON (the floor any publisher pays). Appends are spaced
INTERVAL apart so the system is at rest. Uses DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS if set,
else starts an embedded PostgreSQL (fsync on) and tansu.

Prints one JSON line: p50/p99 in ms for both, ratio = relay p50 / direct p50, goal = p50 < 50 ms.
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
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from event_store.checkpoints import Checkpoints  # noqa: E402
from event_store.kafka import KafkaLog, KafkaTopics, ensure_topics, make_producer, partition_for  # noqa: E402
from event_store.postgres import PostgresEventStore  # noqa: E402
from event_store.relay import Relay, RelayConfig  # noqa: E402
from schemas.catalog import public_data  # noqa: E402
from schemas.envelope import ANY, NewEvent, RecordedEvent  # noqa: E402

SAMPLES = int(os.environ.get("BENCH_SAMPLES", 200))
INTERVAL = float(os.environ.get("BENCH_INTERVAL", 0.02))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(db_url: str, bootstrap: str) -> dict[str, float]:
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    await ensure_topics(bootstrap, [f"{prefix}task", f"{prefix}user", f"{prefix}project"])
    store = await PostgresEventStore.connect(db_url)
    checkpoints = Checkpoints(store.pool)
    name = f"bench-relay-{uuid.uuid4().hex[:8]}"
    await checkpoints.set(name, await store.head_position())
    producer = make_producer(bootstrap)
    await producer.start()
    acked: dict[uuid.UUID, float] = {}

    def observe(batch: Sequence[RecordedEvent], at: float) -> None:
        now = time.perf_counter()
        for event in batch:
            acked[event.id] = now

    config = RelayConfig(topic_prefix=prefix, checkpoint_name=name)
    relay = Relay(
        store, checkpoints, lambda: KafkaLog.connect(bootstrap), config,
        partitioner=partition_for, topics=KafkaTopics(bootstrap), observe=observe, redact=public_data,
    )  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    await asyncio.sleep(0.5)
    relay_ms: list[float] = []
    stream = f"task-{uuid.uuid4()}"
    payload = {"kind": "bench", "n": 0}
    for i in range(SAMPLES):
        result = await store.append(stream, ANY, [NewEvent("task.submitted", {**payload, "n": i})])
        committed = time.perf_counter()
        (event_id,) = result.event_ids
        while event_id not in acked:
            await asyncio.sleep(0.0005)
        relay_ms.append((acked[event_id] - committed) * 1000)
        await asyncio.sleep(INTERVAL)
    stop.set()
    await task

    direct_ms: list[float] = []
    value = json.dumps({"id": str(uuid.uuid4()), "data": payload}).encode()
    for _ in range(SAMPLES):
        start = time.perf_counter()
        await producer.send_and_wait(f"{prefix}task", value=value, key=stream.encode())
        direct_ms.append((time.perf_counter() - start) * 1000)
        await asyncio.sleep(INTERVAL)
    await producer.stop()
    await store.close()
    return {
        "relay_p50_ms": round(statistics.median(relay_ms), 2),
        "relay_p99_ms": round(pct(relay_ms, 0.99), 2),
        "direct_send_p50_ms": round(statistics.median(direct_ms), 2),
        "direct_send_p99_ms": round(pct(direct_ms, 0.99), 2),
    }


def main() -> None:
    db_url = os.environ.get("DATABASE_URL")
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    servers = []
    folder = Path(tempfile.mkdtemp(prefix="taskstream-bench-"))
    try:
        from taskstream import embedded
        from taskstream.migrate import upgrade

        if not db_url:
            servers.append(embedded.start_postgres(folder / "pg", embedded.free_port(), fsync=True))
            db_url = servers[-1].url
            upgrade(db_url)
        if not bootstrap:
            servers.append(embedded.start_tansu(folder / "tansu", embedded.free_port()))
            bootstrap = servers[-1].url
        figures = asyncio.run(measure(db_url, bootstrap))
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    print(
        json.dumps(
            {
                "bench": "relay_latency",
                **figures,
                "ratio": round(figures["relay_p50_ms"] / figures["direct_send_p50_ms"], 2),
                "goal": "relay_p50_ms < 50",
                "goal_met": figures["relay_p50_ms"] < 50,
                "samples": SAMPLES,
            }
        )
    )


if __name__ == "__main__":
    main()
