"""At least once: the relay's checkpoint moves only after the broker acknowledged.

The broker here is a stand-in that refuses the first sends (a broker outage is what is being
simulated, the PostgreSQL side is real); the real brokers are in test_relay.py.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from event_store.checkpoints import Checkpoints
from event_store.postgres import PostgresEventStore
from event_store.relay import Relay, RelayConfig
from schemas.envelope import ANY, NewEvent


class FlakyBroker:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.acked: list[bytes] = []

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None, **_: Any) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.failures > 0:
            self.failures -= 1
            future.set_exception(ConnectionError("broker unavailable"))
        else:
            assert value is not None
            self.acked.append(value)
            future.set_result(None)
        return future


async def test_checkpoint_stays_until_acknowledged_then_everything_is_published(store: PostgresEventStore, unique: str) -> None:
    checkpoints = Checkpoints(store.pool)
    name = f"relay-flaky-{unique}"
    start = await store.head_position()
    await checkpoints.set(name, start)
    broker = FlakyBroker(failures=3)
    config = RelayConfig(checkpoint_name=name, poll_interval=0.2, retry_backoff=0.05)
    relay = Relay(store, checkpoints, broker, config)
    stream = f"task-{uuid.uuid4()}"
    result = await store.append(stream, ANY, [NewEvent("task.touched", {"i": i}) for i in range(4)])
    assert result.last_position is not None

    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    checkpoints_seen: set[int] = set()
    async with asyncio.timeout(15):
        while (position := await checkpoints.get(name)) < result.last_position:
            checkpoints_seen.add(position)
            await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 5)
    # While sends failed the checkpoint never moved past what was acknowledged.
    assert checkpoints_seen <= {start, result.last_position}
    published = [v for v in broker.acked if stream.encode() in v]
    assert len(published) >= 4  # at least once: retried batches may repeat, nothing is lost
    assert broker.failures == 0


async def test_checkpoints_never_move_back(store: PostgresEventStore, unique: str) -> None:
    checkpoints = Checkpoints(store.pool)
    await checkpoints.set(f"c-{unique}", 10)
    await checkpoints.set(f"c-{unique}", 5)
    assert await checkpoints.get(f"c-{unique}") == 10
    assert await checkpoints.get(f"missing-{unique}") == 0
