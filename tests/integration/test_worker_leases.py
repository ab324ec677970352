"""Leases and the one-run-per-attempt guarantee over a real PostgreSQL (no broker needed).

The lease decides whose turn it is; the task's stream decides what happens. The torture test
hands one task to several workers at once *without* the lease (the control a lost lease would
produce) and still sees exactly one start per attempt and one success."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

from commands import task
from commands.authz import Actor
from commands.handler import WriteContext
from commands.service import Service
from event_store.postgres import PostgresEventStore
from schemas.catalog import registry
from schemas.envelope import Metadata
from workers.consumer import TaskLogConsumer
from workers.kinds import Services, load_registry
from workers.leases import Claim, Leases, NewTask
from workers.runner import Worker, WorkerConfig

CTX = WriteContext(Metadata())
MINE = 1_000  # a priority above anything other tests queue, so these claims take our rows first


def rows(n: int) -> list[NewTask]:
    now = datetime.now(UTC)
    return [NewTask(uuid.uuid4(), uuid.uuid4(), "echo", MINE, now, None) for _ in range(n)]


async def test_concurrent_claims_never_share_a_row(store: PostgresEventStore) -> None:
    new = rows(40)
    await Leases(store.pool, "seed", 30).ingest(new)
    ours = {t.task_id for t in new}
    owners = [Leases(store.pool, f"w{i}", 30) for i in range(4)]
    got: dict[uuid.UUID, list[str]] = {}

    async def drain(leases: Leases) -> None:
        while True:
            claims = [c for c in await leases.claim(3) if c.task_id in ours]
            if not claims:
                return
            for c in claims:
                got.setdefault(c.task_id, []).append(leases.owner)

    await asyncio.gather(*(drain(o) for o in owners))
    assert set(got) == ours and all(len(v) == 1 for v in got.values())


async def test_an_expired_lease_is_taken_over_and_the_old_holder_loses_it(store: PostgresEventStore) -> None:
    a, b = Leases(store.pool, "a", 0.3), Leases(store.pool, "b", 30)
    [new] = rows(1)
    await a.ingest([new])
    [first] = [c for c in await a.claim(50) if c.task_id == new.task_id]
    assert not first.taken_over and await a.renew(new.task_id, first.lease_id)
    assert [c for c in await b.claim(50) if c.task_id == new.task_id] == []  # held: not due
    await asyncio.sleep(0.4)
    [second] = [c for c in await b.claim(50) if c.task_id == new.task_id]
    assert second.taken_over
    assert not await a.renew(new.task_id, first.lease_id)  # the old holder learns it lost the lease
    assert not await a.finish(new.task_id, first.lease_id, "done", attempts=1)
    assert await b.finish(new.task_id, second.lease_id, "done", attempts=1)


async def test_a_redelivered_submission_ingests_nothing(store: PostgresEventStore) -> None:
    leases = Leases(store.pool, "r", 30)
    new = rows(3)
    assert await leases.ingest(new) == {t.task_id for t in new}
    assert await leases.ingest(new) == set()


async def submitted_task(service: Service) -> tuple[uuid.UUID, object]:
    owner_id = (await service.register_user(None, email=f"w{uuid.uuid4().hex[:8]}@example.org", display_name="W",
                                            password="password-1", role="member", ctx=CTX)).entity_id  # fmt: skip
    owner = Actor(owner_id, "member")
    project_id = uuid.UUID((await service.create_project(owner, name=f"p-{uuid.uuid4().hex[:6]}", description="", ctx=CTX)).entity_id)
    written = await service.submit_task(owner, project_id, spec={"kind": "sleep", "payload": {"seconds": 0.2}}, ctx=CTX)
    return uuid.UUID(written.entity_id), written


def make_worker(store: PostgresEventStore, name: str) -> Worker:
    return Worker(
        Service(store), Leases(store.pool, name, 30), load_registry(), Services(store, None, None),
        WorkerConfig(worker_id=name, concurrency=4, lease_seconds=30),
    )  # fmt: skip


async def test_one_task_given_to_several_workers_at_once_runs_once(store: PostgresEventStore) -> None:
    service = Service(store)
    task_id, _ = await submitted_task(service)
    workers = [make_worker(store, f"racer-{i}") for i in range(3)]
    await workers[0].leases.ingest([NewTask(task_id, uuid.uuid4(), "sleep", 5, datetime.now(UTC), None)])
    for w in workers:  # the control: no lease held, every worker told to run the task now
        w.reserve(1)
        w.start(Claim(task_id, uuid.uuid4(), False))
    async with asyncio.timeout(15):
        while any(w.busy for w in workers):
            await asyncio.sleep(0.05)
    events = await store.read_stream(task.stream_for(task_id))
    assert [e.type for e in events] == ["task.submitted", "task.started", "task.succeeded"]


async def test_the_consumer_handles_a_redelivered_batch_once(store: PostgresEventStore) -> None:
    service = Service(store)
    task_id, _ = await submitted_task(service)
    [submitted] = await store.read_stream(task.stream_for(task_id))
    worker = make_worker(store, "redelivery")
    consumer = TaskLogConsumer(None, worker, worker.leases, store.pool)
    await consumer.handle([submitted])
    await consumer.handle([submitted])  # the broker delivered it again (a rebalance, a crash before commit)
    async with asyncio.timeout(15):
        while worker.busy:
            await asyncio.sleep(0.05)
    events = await store.read_stream(task.stream_for(task_id))
    assert [e.type for e in events] == ["task.submitted", "task.started", "task.succeeded"]
    assert registry().decode(events[1]).worker_id == "redelivery"  # type: ignore[attr-defined]


async def test_prune_forgets_old_rows_at_rest_but_keeps_the_dead(store: PostgresEventStore) -> None:
    leases = Leases(store.pool, "pruner", 30)
    done, dead, queued = rows(3)
    await leases.ingest([done, dead, queued])
    async with store.pool.connection() as conn:
        await conn.execute(
            "UPDATE worker_tasks SET status = CASE WHEN task_id = %s THEN 'done' ELSE 'dead' END,"
            " updated_at = now() - interval '8 days' WHERE task_id = ANY(%s)",
            (done.task_id, [done.task_id, dead.task_id]),
        )
        await leases.prune(7)
        cur = await conn.execute("SELECT task_id FROM worker_tasks WHERE task_id = ANY(%s)", ([done.task_id, dead.task_id, queued.task_id],))
        left = {row[0] for row in await cur.fetchall()}
    assert left == {dead.task_id, queued.task_id}


async def test_a_worker_runs_at_most_its_concurrency_and_fails_bad_results_clearly(store: PostgresEventStore) -> None:
    from workers.kinds import PermanentError, Registry, StoredResult

    running, most = 0, 0

    async def busy(ctx: object) -> object:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.3)
        running -= 1
        return {"ok": True}

    async def oversized(ctx: object) -> object:
        return StoredResult("blob://local/x", "s", {"big": "x" * 20_000})

    async def refuses(ctx: object) -> object:
        raise PermanentError("the input is wrong")

    kinds = Registry()
    for name, handler in (("busy", busy), ("oversized", oversized), ("refuses", refuses)):
        kinds.register(name, handler)
    service = Service(store)
    owner_id = (await service.register_user(None, email=f"c{uuid.uuid4().hex[:8]}@example.org", display_name="C",
                                            password="password-1", role="member", ctx=CTX)).entity_id  # fmt: skip
    owner = Actor(owner_id, "member")
    project_id = uuid.UUID((await service.create_project(owner, name=f"p-{uuid.uuid4().hex[:6]}", description="", ctx=CTX)).entity_id)
    ids = {}
    for kind in ["busy"] * 6 + ["oversized", "refuses"]:
        written = await service.submit_task(owner, project_id, spec={"kind": kind, "max_attempts": 3}, ctx=CTX)
        ids[uuid.UUID(written.entity_id)] = kind
    worker = Worker(Service(store), Leases(store.pool, "limited", 30), kinds, Services(store, None, None),
                    WorkerConfig(worker_id="limited", concurrency=2, lease_seconds=30, poll_seconds=0.1))  # fmt: skip
    consumer = TaskLogConsumer(None, worker, worker.leases, store.pool)
    await consumer.handle([(await store.read_stream(task.stream_for(t)))[0] for t in ids])
    stop = asyncio.Event()
    claiming = asyncio.create_task(worker.run(stop))
    try:
        async with asyncio.timeout(30):
            while True:
                last = {t: (await store.read_stream(task.stream_for(t)))[-1] for t in ids}
                if all(e.type in ("task.succeeded", "task.failed") and not e.data.get("retry_scheduled") for e in last.values()):
                    break
                await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(claiming, 15)
    assert most == 2
    by_kind = {ids[t]: e for t, e in last.items()}
    assert all(e.type == "task.succeeded" for t, e in last.items() if ids[t] == "busy")
    assert by_kind["oversized"].type == "task.failed" and "cannot be recorded" in by_kind["oversized"].data["error"]
    assert by_kind["refuses"].data == {**by_kind["refuses"].data, "error": "the input is wrong", "attempt": 1, "retry_scheduled": False}


async def test_a_claim_hands_over_the_submissions_trace_context(store: PostgresEventStore) -> None:
    """A task run later (claimed, not handed over at once) still joins its submission's trace."""
    traced = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
    [plain, with_trace] = rows(2)
    with_trace = NewTask(with_trace.task_id, with_trace.project_id, "echo", MINE, with_trace.submitted_at, None, traced)
    leases = Leases(store.pool, "traced", 30)
    await leases.ingest([plain, with_trace])
    claimed: dict[uuid.UUID, Claim] = {}
    async with asyncio.timeout(10):
        while len(claimed) < 2:
            claimed.update({c.task_id: c for c in await leases.claim(10) if c.task_id in (plain.task_id, with_trace.task_id)})
    assert claimed[with_trace.task_id].traceparent == traced
    assert claimed[plain.task_id].traceparent is None


async def test_freed_slots_keep_claiming_queued_work_without_waiting_for_the_poll(store: PostgresEventStore) -> None:
    """A full worker with queued rows left claims them as its slots free, in batches, without
    any further wake-up: the poll (60 s here) never comes into it."""
    from workers.kinds import Registry

    async def short(ctx: object) -> object:
        await asyncio.sleep(0.05)
        return None

    kinds = Registry()
    kinds.register("short", short)
    service = Service(store)
    owner_id = (await service.register_user(None, email=f"q{uuid.uuid4().hex[:8]}@example.org", display_name="Q",
                                            password="password-1", role="member", ctx=CTX)).entity_id  # fmt: skip
    owner = Actor(owner_id, "member")
    project_id = uuid.UUID((await service.create_project(owner, name=f"p-{uuid.uuid4().hex[:6]}", description="", ctx=CTX)).entity_id)
    ids = [uuid.UUID((await service.submit_task(owner, project_id, spec={"kind": "short"}, ctx=CTX)).entity_id) for _ in range(9)]
    worker = Worker(Service(store), Leases(store.pool, "backlog", 30), kinds, Services(store, None, None),
                    WorkerConfig(worker_id="backlog", concurrency=2, lease_seconds=30, poll_seconds=60))  # fmt: skip
    await TaskLogConsumer(None, worker, worker.leases, store.pool).handle([(await store.read_stream(task.stream_for(t)))[0] for t in ids])
    stop = asyncio.Event()
    claiming = asyncio.create_task(worker.run(stop))
    try:
        async with asyncio.timeout(30):
            while True:
                last = [(await store.read_stream(task.stream_for(t)))[-1].type for t in ids]
                if all(t == "task.succeeded" for t in last):
                    break
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(claiming, 15)
    async with store.pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM worker_tasks WHERE task_id = ANY(%s) AND status = 'done'", (ids,))
        assert (await cur.fetchone())[0] == 9  # type: ignore[index]
