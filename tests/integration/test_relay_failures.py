"""The relay under broker failures: at least once, per-stream order, a lost log, one leader.

The broker here is a stand-in (PostgreSQL is real): it refuses sends at random, and it models
aiokafka's accumulator, in which two batches queued for one partition expire one by one, so an
older one can fail while a newer one is acknowledged. The relay must never give it the chance.
A real broker restart is in test_relay_restarts.py.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence

import psycopg
import pytest

from event_store.checkpoints import Checkpoints
from event_store.kafka import Record, partition_for
from event_store.leadership import leadership
from event_store.postgres import PostgresEventStore
from event_store.relay import Relay, RelayConfig
from schemas.envelope import ANY, CATEGORIES, NewEvent
from tests.support.relaying import wait_for_checkpoint


class StandInBroker:
    """Partitions as lists of values; sends fail with probability ``failure_rate``, and a send
    after ``fail_after`` successes in a row fails whatever the draw: a run surely meets failures
    (how many sends it makes depends on how its concurrent writes interleaved), and as long as
    ``fail_after`` exceeds the sends of one relay batch, every retry can get through."""

    def __init__(self, failure_rate: float = 0.0, seed: int = 0, partitions: int = 4, fail_after: int = 0) -> None:
        self.logs: dict[tuple[str, int], list[bytes]] = defaultdict(list)
        self.topics: set[str] = set()
        self.failure_rate = failure_rate
        self.rng = random.Random(seed)
        self.partitions = partitions
        self.in_flight: dict[tuple[int, tuple[str, int]], int] = defaultdict(int)  # (writer, tp) -> sends
        self.max_in_flight = 0
        self.failures = 0
        self.writers = 0
        self.successes_in_a_row = 0
        self.fail_after = fail_after

    async def connect(self) -> StandInWriter:
        self.writers += 1
        return StandInWriter(self, self.writers)

    def lose_log(self, *, keep_topics: bool = False) -> None:
        self.logs.clear()
        if not keep_topics:
            self.topics.clear()

    def values(self, prefix: str) -> list[bytes]:
        return [v for (topic, _), values in sorted(self.logs.items()) if topic.startswith(prefix) for v in values]

    # event_store.relay.Topics
    async def ensure(self, topics: Iterable[str]) -> set[str]:
        created = set(topics) - self.topics
        self.topics |= created
        return created

    async def missing(self, topics: Iterable[str]) -> set[str]:
        return set(topics) - self.topics

    async def end_offsets(self, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        return {tp: len(self.logs[tp]) for tp in partitions if tp[0] in self.topics}


class StandInWriter:
    def __init__(self, broker: StandInBroker, writer_id: int) -> None:
        self.broker = broker
        self.id = writer_id
        self.closed = False

    async def partitions(self, topic: str) -> int:
        if topic not in self.broker.topics:
            raise ConnectionError(f"unknown topic {topic}")
        return self.broker.partitions

    async def send(self, topic: str, partition: int, records: Sequence[Record]) -> int:
        broker, tp = self.broker, (topic, partition)
        broker.in_flight[(self.id, tp)] += 1
        broker.max_in_flight = max(broker.max_in_flight, broker.in_flight[(self.id, tp)])
        try:
            await asyncio.sleep(broker.rng.random() * 0.002)
            if self.closed:
                raise ConnectionError("this producer was closed")
            forced = 0 < broker.fail_after <= broker.successes_in_a_row
            if broker.in_flight[(self.id, tp)] > 1 or broker.rng.random() < broker.failure_rate or forced:
                # Two batches queued for one partition: the older one expires (as aiokafka's do).
                broker.failures += 1
                broker.successes_in_a_row = 0
                raise ConnectionError("the partition's leader is not available")
            if topic not in broker.topics:
                raise ConnectionError(f"unknown topic {topic}")
            log = broker.logs[tp]
            first = len(log)
            log.extend(r.value for r in records)
            broker.successes_in_a_row += 1
            return first
        finally:
            broker.in_flight[(self.id, tp)] -= 1

    async def close(self) -> None:
        self.closed = True


def by_stream_deduplicated(values: Iterable[bytes]) -> dict[str, list[int]]:
    """What a consumer that drops duplicates by event id sees, per stream: the versions."""
    seen: set[str] = set()
    streams: dict[str, list[int]] = defaultdict(list)
    for value in values:
        event = json.loads(value)
        if event["id"] in seen:
            continue
        seen.add(event["id"])
        streams[event["stream"]].append(event["version"])
    return streams


def stand_in_relay(store: PostgresEventStore, broker: StandInBroker, config: RelayConfig, **kwargs: object) -> Relay:
    return Relay(
        store, Checkpoints(store.pool), broker.connect, config, partitioner=partition_for, topics=broker, **kwargs  # type: ignore[arg-type]
    )


async def run_until(relay: Relay, checkpoints: Checkpoints, name: str, position: int, timeout: float = 30) -> set[int]:
    """Run ``relay`` until its checkpoint reaches ``position``; return the checkpoints seen."""
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    seen: set[int] = set()
    try:
        async with asyncio.timeout(timeout):
            while (current := await checkpoints.get(name)) < position:
                seen.add(current)
                await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    return seen


async def write_streams(store: PostgresEventStore, streams: list[str], rounds: int) -> dict[str, int]:
    for round_ in range(rounds):
        await asyncio.gather(*(store.append(s, ANY, [NewEvent("task.touched", {"r": round_, "i": i}) for i in range(2)]) for s in streams))
    return {s: rounds * 2 for s in streams}


async def test_under_send_failures_every_stream_stays_in_order_and_nothing_is_lost(store: PostgresEventStore, unique: str) -> None:
    name = f"relay-flaky-{unique}"
    broker = StandInBroker(failure_rate=0.15, seed=7, fail_after=5)  # a batch makes at most 4 sends (partitions)
    config = RelayConfig(topic_prefix=f"f{unique}.", checkpoint_name=name, batch_size=37, poll_interval=0.2, retry_backoff=0.01)
    start = await store.head_position()
    streams = [f"task-{uuid.uuid4()}" for _ in range(24)]
    versions = await write_streams(store, streams, rounds=12)
    mine = {e.global_position for s in streams for e in await store.read_stream(s)}
    moves: list[int] = []

    class CheckedCheckpoints(Checkpoints):
        async def set(self, name: str, position: int) -> None:
            acked = {json.loads(v)["global_position"] for v in broker.values(config.topic_prefix)}
            assert {p for p in mine if p <= position} <= acked, "the checkpoint passed an unacknowledged event"
            moves.append(position)
            await super().set(name, position)

    checkpoints = CheckedCheckpoints(store.pool)
    await checkpoints.set(name, start)
    await broker.ensure(f"{config.topic_prefix}{c}" for c in CATEGORIES)  # the log exists: nothing lost
    relay = Relay(store, checkpoints, broker.connect, config, partitioner=partition_for, topics=broker)
    await run_until(relay, checkpoints, name, max(mine))
    assert len(moves) > 3 and broker.failures > 5 and relay.attempts > 5  # it really failed, often
    assert relay.logs_lost == 0 and min(moves[1:]) > start  # never republished from the start
    assert broker.max_in_flight == 1  # never two sends of one partition at once
    published = by_stream_deduplicated(broker.values(config.topic_prefix))
    for stream in streams:  # nothing lost, and in version order after dropping duplicates
        assert published[stream] == list(range(1, versions[stream] + 1)), stream


async def test_the_stand_in_reorders_a_relay_that_queues_two_batches_per_partition(store: PostgresEventStore) -> None:
    """The control: two batches of one partition in flight at once (what aiokafka's per-record
    send did) and the stand-in fails the older one: after a republish, a consumer that drops
    duplicates sees e4 before e1."""
    broker = StandInBroker(seed=1)
    writer = await broker.connect()
    await broker.ensure(["t"])
    records = [Record(b"task-x", json.dumps({"id": f"e{i}", "stream": "task-x", "version": i}).encode(), 0, []) for i in range(1, 5)]
    outcomes = await asyncio.gather(writer.send("t", 0, records[:3]), writer.send("t", 0, records[3:]), return_exceptions=True)
    assert isinstance(outcomes[0], ConnectionError) and outcomes[1] == 0
    await writer.send("t", 0, records)  # the republish from the checkpoint
    assert by_stream_deduplicated(broker.logs[("t", 0)])["task-x"] == [4, 1, 2, 3]


@pytest.mark.parametrize("keep_topics", [False, True], ids=["topics-gone", "topics-recreated-empty"])
async def test_a_log_lost_while_the_relay_runs_is_republished(store: PostgresEventStore, unique: str, keep_topics: bool) -> None:
    checkpoints = Checkpoints(store.pool)
    name = f"relay-lost-{unique}"
    await checkpoints.set(name, await store.head_position())
    broker = StandInBroker()
    config = RelayConfig(topic_prefix=f"l{unique}.", checkpoint_name=name, poll_interval=0.1, log_check_interval=0.1)
    await broker.ensure(f"{config.topic_prefix}{c}" for c in CATEGORIES)
    relay = stand_in_relay(store, broker, config)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        early = f"task-{uuid.uuid4()}"
        first = await store.append(early, ANY, [NewEvent("task.touched", {"n": 1})])
        await wait_for_checkpoint(checkpoints, name, first.last_position or 0, timeout=10, poll=0.02)
        broker.lose_log(keep_topics=keep_topics)  # the broker restarted with an empty log
        await asyncio.sleep(0.3)
        later = f"task-{uuid.uuid4()}"
        second = await store.append(later, ANY, [NewEvent("task.touched", {"n": 2})])
        async with asyncio.timeout(60):
            while not relay.logs_lost:
                await asyncio.sleep(0.05)
            # The checkpoint went back to 0 when the loss was seen; past `second`, the table has
            # been republished up to it.
            while await checkpoints.get(name) < (second.last_position or 0):
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    published = by_stream_deduplicated(broker.values(config.topic_prefix))
    assert published[early] == [1] and published[later] == [1]
    assert relay.logs_lost >= 1


async def test_only_one_relay_holds_leadership_and_a_waiting_one_takes_over(database_url: str, unique: str) -> None:
    name = f"relay-leader-{unique}"
    waits = 0

    async def waited() -> None:
        nonlocal waits
        waits += 1

    async with leadership(database_url, name, retry_interval=0.05, check_interval=0.1) as first:
        second_entered = asyncio.Event()

        async def second() -> None:
            async with leadership(database_url, name, retry_interval=0.05, check_interval=0.1, on_wait=waited) as lease:
                await lease.check()
                second_entered.set()
                await asyncio.sleep(0.2)

        contender = asyncio.create_task(second())
        await asyncio.sleep(0.5)
        assert not second_entered.is_set() and waits >= 3  # it waits while the first holds the lock
        await first.check()
        # The first relay's session dies (as when its process is killed): the lock goes with it.
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'taskstream-relay-leader' AND pid IN"
                " (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = %s::oid)",
                (_objid(name),),
            )
        async with asyncio.timeout(5):
            await first.lost.wait()  # the first one notices and stops publishing
            await second_entered.wait()  # the second one took over
        await contender


def _objid(name: str) -> int:
    from event_store.leadership import lock_key

    return lock_key(name) & 0xFFFFFFFF
