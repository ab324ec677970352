"""``taskstream replay`` over a real PostgreSQL and Redis: a rebuild equals what the live projector
made; an interrupted rebuild resumes to the same tables; readers during the swap see a whole
table, old or new; the live projector carries on after the swap; the cache is emptied of the
swapped models' entries.

Each test module has a database of its own (a replay rebuilds every row of its tables).
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis

from commands.authz import Actor
from commands.errors import DomainError
from commands.handler import WriteContext
from commands.service import Service
from event_store.postgres import PostgresEventStore
from projections import verify
from projections.catalog import MODELS
from projections.replay import NoProgress, Replay, Request, connect, discard, redis_invalidator
from projections.runtime import Projector, Record
from schemas.catalog import registry
from schemas.envelope import Metadata
from schemas.tasks import FailTask, StartTask, SucceedTask
from taskstream import dbroles
from tests.conftest import create_database

ROOT = Path(__file__).resolve().parents[2]
CTX = WriteContext(Metadata(actor="test"))


def _owner_url(app_url: str, urls: dict[str, str]) -> str:
    return app_url if urls["admin"] == urls["app"] else dbroles.role_url(app_url, dbroles.OWNER_ROLE)


@pytest.fixture(scope="module")
def urls(database_urls: dict[str, str]) -> dict[str, str]:
    app = create_database(database_urls)
    return {"app": app, "owner": _owner_url(app, database_urls)}


@pytest.fixture(scope="module")
async def store(urls: dict[str, str]) -> AsyncIterator[PostgresEventStore]:
    s = await PostgresEventStore.connect(urls["app"], max_size=8)
    yield s
    await s.close()


class LiveProjection:
    """The live projector's own code path (``Projector.apply_batch``) fed from the store in
    global order, in-process: what faust would hand it, without a broker."""

    def __init__(self, store: PostgresEventStore) -> None:
        self.store = store
        self.position = 0
        self.projectors = {name: Projector(model, store.pool, store.read_streams, registry(), consumer="test")
                           for name, model in MODELS.items()}  # fmt: skip

    async def catch_up(self) -> None:
        while batch := await self.store.read_all(self.position, 300):
            for name, projector in self.projectors.items():
                mine = [Record(e, f"events.{MODELS[name].category}", 0, e.global_position) for e in batch if MODELS[name].owns(e.stream)]
                if mine:
                    await projector.apply_batch(mine)
            self.position = batch[-1].global_position


@pytest.fixture(scope="module")
def live(store: PostgresEventStore) -> LiveProjection:
    return LiveProjection(store)


def checksums(url: str) -> dict[str, tuple[int, str]]:
    with connect(url) as conn:
        return {m: verify.checksum(conn, m, m) for m in MODELS}


def compare_with_replay(url: str) -> list[verify.TableReport]:
    with connect(url) as conn:
        head = int(conn.execute("SELECT COALESCE(max(global_position), 0) FROM events").fetchone()[0])  # type: ignore[index]
    result = Replay(url, Request(until_position=head, parallel=False)).run()
    assert result.status == "built"
    try:
        with connect(url) as conn:
            return [verify.compare(conn, m, m, t, settle=0) for m, t in result.tables.items()]
    finally:
        discard(url, result.run_id)


# --- a random workload through the command service ----------------------------------------------

actions = st.lists(
    st.tuples(st.sampled_from(["project", "member", "describe", "rename", "submit", "start", "succeed", "fail", "fail_final",
                               "cancel", "requeue", "profile", "archive"]), st.integers(0, 50)),  # fmt: skip
    min_size=5, max_size=30,
)


class Workload:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.admin = Actor(str(uuid.uuid4()), "admin")
        self.users: list[str] = []
        self.projects: list[tuple[uuid.UUID, Actor]] = []
        self.tasks: dict[uuid.UUID, int] = {}  # task -> attempts started

    async def user(self) -> str:
        written = await self.service.register_user(None, email=f"u{uuid.uuid4().hex[:10]}@example.org", display_name="U",
                                                   password="password-123", role="member", ctx=CTX)  # fmt: skip
        self.users.append(written.entity_id)
        return written.entity_id

    async def run(self, steps: list[tuple[str, int]]) -> None:
        if len(self.users) < 2:
            await self.user()
            await self.user()
        for action, n in steps:
            try:
                await self.step(action, n)
            except DomainError:
                pass  # refused (an illegal transition, an archived project): nothing written

    async def step(self, action: str, n: int) -> None:
        s = self.service
        if action == "project" or not self.projects:
            owner = Actor(self.users[n % len(self.users)], "member")
            written = await s.create_project(owner, name=f"p {uuid.uuid4().hex[:8]}", description="d", ctx=CTX)
            self.projects.append((uuid.UUID(written.entity_id), owner))
            return
        project_id, owner = self.projects[n % len(self.projects)]
        task_ids = list(self.tasks)
        task_id = task_ids[n % len(task_ids)] if task_ids else None
        if action == "member":
            await s.put_member(owner, project_id, uuid.UUID(self.users[n % len(self.users)]), role="editor", ctx=CTX)
        elif action == "describe":
            await s.update_project(owner, project_id, changes={"description": f"d{n}"}, ctx=CTX)
        elif action == "rename":
            await s.update_project(owner, project_id, changes={"name": f"n {uuid.uuid4().hex[:6]}"}, ctx=CTX)
        elif action == "archive":
            await s.archive_project(owner, project_id, ctx=CTX)
        elif action == "profile":
            await s.update_user(self.admin, uuid.UUID(self.users[n % len(self.users)]), display_name=f"U{n}", ctx=CTX)
        elif action == "submit" or task_id is None:
            written = await s.submit_task(owner, project_id, spec={"kind": "echo", "payload": {"n": n}, "max_attempts": 2}, ctx=CTX)
            self.tasks[uuid.UUID(written.entity_id)] = 0
        elif action == "start":
            attempt = self.tasks[task_id] + 1
            await s.report_task(StartTask(task_id=task_id, worker_id=f"w{n}", attempt=attempt), ctx=CTX)
            self.tasks[task_id] = attempt
        elif action in ("succeed", "fail", "fail_final"):
            attempt = max(1, self.tasks[task_id])
            command = (SucceedTask(task_id=task_id, attempt=attempt, summary="ok", result={"n": n}) if action == "succeed"
                       else FailTask(task_id=task_id, attempt=attempt, error=f"boom\t{n}\n\\", retryable=action == "fail"))  # fmt: skip
            await s.report_task(command, ctx=CTX)
        elif action == "cancel":
            await s.cancel_task(owner, task_id, reason=f"stop {n}", ctx=CTX)
        elif action == "requeue":
            await s.requeue_task(self.admin, task_id, reason="again", ctx=CTX)


@pytest.fixture(scope="module")
def workload(store: PostgresEventStore) -> Workload:
    return Workload(Service(store))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(before=actions, after=actions)
async def test_a_rebuild_equals_the_live_read_models_and_the_projector_carries_on_after_the_swap(
    urls: dict[str, str], live: LiveProjection, workload: Workload, before: list[tuple[str, int]], after: list[tuple[str, int]]
) -> None:
    await workload.run(before)
    await live.catch_up()
    for report in await asyncio.to_thread(compare_with_replay, urls["owner"]):
        assert report.equal, report.to_json()
        assert (report.live_rows, report.live_checksum) == (report.replay_rows, report.replay_checksum)
    seen = await asyncio.to_thread(checksums, urls["owner"])
    result = await asyncio.to_thread(Replay(urls["owner"], Request(parallel=False, cache_grace=0)).run)
    assert result.status == "swapped" and not result.failures
    assert await asyncio.to_thread(checksums, urls["owner"]) == seen  # the same content, now from the rebuilt tables
    # The live projector (the app role) writes the swapped tables: redelivered events change
    # nothing, new ones apply, and the result is still what a replay gives.
    live.position = max(0, live.position - 40)
    await workload.run(after)
    await live.catch_up()
    for report in await asyncio.to_thread(compare_with_replay, urls["owner"]):
        assert report.equal, report.to_json()


def _load_bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_replay", ROOT / "bench" / "replay.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_backlog(url: str, events: int, seed: int) -> None:
    lines = _load_bench().backlog(events, seed=seed)
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.cursor() as cur, cur.copy("COPY events (stream_id, version, event_id, type, schema_version, data, metadata) FROM STDIN") as copy:
            copy.write("".join(lines))


@pytest.fixture(scope="module")
def backlog_urls(database_urls: dict[str, str]) -> dict[str, str]:
    app = create_database(database_urls)
    urls = {"app": app, "owner": _owner_url(app, database_urls)}
    write_backlog(urls["app"], 6000, seed=11)
    return urls


def test_an_interrupted_replay_resumes_to_the_same_tables(backlog_urls: dict[str, str]) -> None:
    url = backlog_urls["owner"]
    with connect(url) as conn:
        head = int(conn.execute("SELECT max(global_position) FROM events").fetchone()[0])  # type: ignore[index]
    whole = Replay(url, Request(until_position=head, parallel=False)).run()
    calls = 0

    def stop_soon() -> bool:
        nonlocal calls
        calls += 1
        return calls > 6

    small = {"chunk_span": 500, "checkpoint_events": 400, "parallel": False}
    first = Replay(url, Request(until_position=head, **small), stopped=stop_soon).run()  # type: ignore[arg-type]
    assert first.status == "interrupted"
    with connect(url) as conn:
        reached = [p for (p,) in conn.execute("SELECT position FROM replay_progress WHERE run_id = %s", (first.run_id,))]
        assert any(0 < p < head for p in reached) and max(reached) < head, reached
        # What was written matches the checkpoint: no row beyond the position reached.
        for model, table in first.tables.items():
            (part_position,) = conn.execute("SELECT max(position) FROM replay_progress WHERE run_id = %s AND part = %s",
                                            (first.run_id, model)).fetchone()  # type: ignore[misc]  # fmt: skip
            (beyond_part,) = conn.execute(f"SELECT count(*) FROM {table} WHERE global_position > %s", (part_position,)).fetchone()  # type: ignore[misc]
            assert beyond_part == 0, model
    second = Replay(url, Request(until_position=head, **small)).run()  # type: ignore[arg-type]
    assert second.resumed and second.run_id == first.run_id and second.status == "built"
    with connect(url) as conn:
        for model in MODELS:
            assert verify.checksum(conn, model, second.tables[model]) == verify.checksum(conn, model, whole.tables[model])
    discard(url, whole.run_id)
    discard(url, second.run_id)


class RangesFolded(NoProgress):
    """Counts the ranges a part folded (a sequential part reports each one): a stop between
    two of them, at a checkpoint, whatever the timing."""

    def __init__(self) -> None:
        self.ranges = 0

    def advance(self, events: int) -> None:
        self.ranges += 1


def _has_primary_key(url: str, table: str) -> bool:
    with connect(url) as conn:
        (keys,) = conn.execute("SELECT count(*) FROM pg_index WHERE indrelid = %s::regclass AND indisprimary", (table,)).fetchone()  # type: ignore[misc]
    return bool(keys)


def test_a_part_that_writes_rows_again_gives_the_table_its_key_first_and_one_that_does_not_leaves_it_to_the_end(
    backlog_urls: dict[str, str],
) -> None:
    """Rows written again are replaced by key with a join: without the key, a scan of the whole
    table at every checkpoint. A part's first checkpoint only adds rows and leaves the key to
    ``finish_table`` (one sort); its second, and a resumed part's first, rewrite rows and add the
    key before."""
    url = backlog_urls["owner"]
    with connect(url) as conn:
        head = int(conn.execute("SELECT max(global_position) FROM events").fetchone()[0])  # type: ignore[index]
        (rewritten,) = conn.execute(  # the precondition: tasks of the first range have events in the second
            "SELECT count(DISTINCT stream_id) FROM events WHERE category = 'task' AND global_position > 500"
            " AND global_position <= 1000 AND stream_id IN (SELECT stream_id FROM events WHERE category = 'task' AND global_position <= 500)"
        ).fetchone()  # type: ignore[misc]
    assert rewritten > 0
    small = {"models": ("tasks",), "until_position": head, "parallel": False, "chunk_span": 500, "checkpoint_events": 1}

    def until(ranges: int) -> tuple[RangesFolded, Any]:
        progress = RangesFolded()
        return progress, lambda: progress.ranges >= ranges

    progress, stopped = until(1)
    once = Replay(url, Request(**small), progress=progress, stopped=stopped).run()  # type: ignore[arg-type]
    assert once.status == "interrupted" and progress.ranges == 1
    assert not _has_primary_key(url, once.tables["tasks"])  # rows written once: the key waits for the end
    progress, stopped = until(1)
    resumed = Replay(url, Request(**small), progress=progress, stopped=stopped).run()  # type: ignore[arg-type]
    assert resumed.resumed and resumed.run_id == once.run_id and resumed.status == "interrupted"
    assert _has_primary_key(url, resumed.tables["tasks"])  # its first checkpoint rewrote rows it loaded
    discard(url, resumed.run_id)
    progress, stopped = until(2)
    twice = Replay(url, Request(**small), progress=progress, stopped=stopped).run()  # type: ignore[arg-type]
    assert not twice.resumed and twice.status == "interrupted" and progress.ranges == 2
    assert _has_primary_key(url, twice.tables["tasks"])  # the second checkpoint rewrote rows of the first
    finished = Replay(url, Request(**{**small, "chunk_span": 250_000, "checkpoint_events": 500_000})).run()  # type: ignore[arg-type]
    whole = Replay(url, Request(models=("tasks",), until_position=head, parallel=False)).run()
    assert finished.run_id == twice.run_id and finished.status == "built"
    with connect(url) as conn:
        assert verify.checksum(conn, "tasks", finished.tables["tasks"]) == verify.checksum(conn, "tasks", whole.tables["tasks"])
    discard(url, finished.run_id)
    discard(url, whole.run_id)


def test_until_a_time_builds_as_of_the_last_event_recorded_by_then_and_one_replay_runs_at_a_time(backlog_urls: dict[str, str]) -> None:
    from projections.replay import REPLAY_LOCK_KEY, ReplayBusy

    url = backlog_urls["owner"]
    with connect(url) as conn:
        (moment,) = conn.execute("SELECT recorded_at FROM events WHERE global_position = 1500").fetchone()  # type: ignore[misc]
        (position,) = conn.execute("SELECT max(global_position) FROM events WHERE recorded_at <= %s", (moment,)).fetchone()  # type: ignore[misc]
    result = Replay(url, Request(until_time=moment, parallel=False)).run()
    assert result.status == "built" and result.position == position >= 1500
    with connect(url) as conn:
        for model, table in result.tables.items():
            (beyond,) = conn.execute(f"SELECT count(*) FROM {table} WHERE global_position > %s", (position,)).fetchone()  # type: ignore[misc]
            assert beyond == 0, model
        conn.execute("SELECT pg_advisory_lock(%s)", (REPLAY_LOCK_KEY,))
        with pytest.raises(ReplayBusy):
            Replay(url, Request(parallel=False)).run()
        conn.execute("SELECT pg_advisory_unlock(%s)", (REPLAY_LOCK_KEY,))
    discard(url, result.run_id)


def test_folding_in_parallel_shards_gives_the_same_tables_as_one_process(backlog_urls: dict[str, str]) -> None:
    url = backlog_urls["owner"]
    with connect(url) as conn:
        head = int(conn.execute("SELECT max(global_position) FROM events").fetchone()[0])  # type: ignore[index]
    one = Replay(url, Request(until_position=head, parallel=False)).run()
    sharded = Replay(url, Request(until_position=head, parallel=True, shards=2, chunk_span=1000)).run()
    with connect(url) as conn:
        parts = [p for (p,) in conn.execute("SELECT part FROM replay_progress WHERE run_id = %s ORDER BY part", (sharded.run_id,))]
        assert parts == ["projects", "tasks/0", "tasks/1", "users"]
        for model in MODELS:
            assert verify.checksum(conn, model, sharded.tables[model]) == verify.checksum(conn, model, one.tables[model])
    discard(url, one.run_id)
    discard(url, sharded.run_id)


def _read_loop(url: str, stop: threading.Event, seen: list[tuple[int, str]], errors: list[BaseException]) -> None:
    """A reader as the gateway reads (autocommit, prepared statements): whole-table snapshots."""
    query = "SELECT count(*), COALESCE(md5(string_agg(md5(t::text), '' ORDER BY task_id)), '') FROM tasks AS t"
    try:
        with psycopg.connect(url, autocommit=True, prepare_threshold=0) as conn:
            while not stop.is_set():
                seen.append(conn.execute(query).fetchone())  # type: ignore[arg-type]
    except BaseException as exc:  # noqa: BLE001 - the test fails with it
        errors.append(exc)


def _whole(url: str) -> tuple[int, str]:
    with connect(url) as conn:
        return conn.execute(
            "SELECT count(*), COALESCE(md5(string_agg(md5(t::text), '' ORDER BY task_id)), '') FROM tasks AS t"
        ).fetchone()  # type: ignore[return-value]


def test_readers_during_a_swap_see_the_old_table_or_the_new_one_never_a_half_built_one(
    database_urls: dict[str, str], redis_url: str
) -> None:
    app = create_database(database_urls)
    owner = _owner_url(app, database_urls)
    write_backlog(app, 4000, seed=5)
    assert Replay(owner, Request(parallel=False)).run().status == "swapped"
    with connect(owner) as conn:  # the live table drifts from the log: the swap will change it
        conn.execute("UPDATE tasks SET summary = 'drifted' WHERE task_id IN (SELECT task_id FROM tasks ORDER BY task_id LIMIT 50)")
        stale = conn.execute("SELECT task_id, version FROM tasks ORDER BY task_id LIMIT 1").fetchone()
    assert stale is not None
    cache = Redis.from_url(redis_url)
    stale_key = f"ts:rm:tasks:{stale[0]}"
    cache.set(stale_key, f"{stale[1]}:{{\"summary\":\"drifted\"}}")  # same version, other content
    before = _whole(app)
    stop, seen, errors = threading.Event(), [], []  # type: ignore[var-annotated]
    readers = [threading.Thread(target=_read_loop, args=(app, stop, seen, errors)) for _ in range(2)]
    for reader in readers:
        reader.start()
    try:
        result = Replay(owner, Request(models=("tasks",), parallel=False, cache_grace=0.2), invalidate=redis_invalidator(redis_url)).run()
    finally:
        stop.set()
        for reader in readers:
            reader.join(timeout=30)
    after = _whole(app)
    assert result.status == "swapped" and not errors
    assert before != after and before[0] == after[0]
    assert set(seen) <= {before, after} and before in seen and after in seen, set(seen) - {before, after}
    assert cache.get(stale_key) is None  # the entry of the same version but other content is gone
    cache.close()
    # Control: the same readers over a table rebuilt in place, chunk by chunk, do see half a table.
    with connect(owner) as conn:
        conn.execute("CREATE TABLE tasks_control (LIKE tasks INCLUDING ALL)")
        conn.execute("GRANT SELECT ON tasks_control TO PUBLIC")
    control_seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def read_control() -> None:
        with psycopg.connect(app, autocommit=True) as conn:
            while not stop.is_set():
                control_seen.append(conn.execute("SELECT count(*), '' FROM tasks_control").fetchone())  # type: ignore[arg-type]

    reader = threading.Thread(target=read_control)
    reader.start()
    try:
        with connect(owner) as conn:
            ids = [r[0] for r in conn.execute("SELECT task_id FROM tasks ORDER BY task_id")]
            for start in range(0, len(ids), max(1, len(ids) // 5)):
                conn.execute("INSERT INTO tasks_control SELECT * FROM tasks WHERE task_id = ANY(%s)", (ids[start : start + len(ids) // 5],))
                threading.Event().wait(0.05)
    finally:
        stop.set()
        reader.join(timeout=30)
    assert {n for n, _ in control_seen} - {0, len(ids)}, "the control never saw a half-built table"


async def test_a_v1_event_stored_raw_is_projected_replayed_and_decided_as_v2(
    urls: dict[str, str], store: PostgresEventStore, live: LiveProjection
) -> None:
    from commands import project
    from commands.handler import load
    from schemas.envelope import NO_STREAM, NewEvent

    project_id, owner = uuid.uuid4(), uuid.uuid4()
    stream = f"project-{project_id}"
    await store.append(stream, NO_STREAM, [
        NewEvent("project.created", {"project_id": str(project_id), "owner_id": str(owner), "name": "Old", "description": "d0"}),
        # As written before project.updated had a version 2: null meant "unchanged".
        NewEvent("project.updated", {"project_id": str(project_id), "name": "Renamed", "description": None}, schema_version=1),
        NewEvent("project.updated", {"project_id": str(project_id), "changes": {"description": "d2"}}, schema_version=2),
    ])  # fmt: skip
    stored = await store.read_stream(stream)
    assert [e.schema_version for e in stored] == [1, 1, 2]  # never rewritten
    decoded = registry().decode(stored[1])
    assert decoded.changes.name == "Renamed" and decoded.changes.description is None  # type: ignore[attr-defined]
    # The command side folds it: the aggregate has the v1 rename and the v2 description.
    loaded = await load(store, project.DECIDER, stream)
    assert (loaded.state.name, loaded.state.description, loaded.version) == ("Renamed", "d2", 3)  # type: ignore[union-attr]
    # The live projector and a replay both apply it.
    await live.catch_up()
    with connect(urls["owner"]) as conn:
        row = conn.execute("SELECT name, description, version FROM projects WHERE project_id = %s", (project_id,)).fetchone()
    assert row == ("Renamed", "d2", 3)
    for report in await asyncio.to_thread(compare_with_replay, urls["owner"]):
        assert report.equal, report.to_json()


async def test_a_replay_under_concurrent_writes_and_projection_swaps_in_tables_the_projector_keeps_exact(
    urls: dict[str, str], live: LiveProjection, workload: Workload
) -> None:
    """Commands and the live projector keep running through the whole replay, its catch-up
    rounds and its swap; afterwards the live tables are exactly what a replay gives."""
    import random

    await workload.run([("project", 1), ("submit", 1), ("submit", 2)])
    await live.catch_up()
    rng = random.Random(8)
    kinds = ["submit", "start", "succeed", "fail", "cancel", "member", "describe", "profile", "submit", "start"]
    head_at_start = await live.store.head_position()
    replay = Replay(urls["owner"], Request(parallel=False, chunk_span=40, checkpoint_events=50, catch_up_until=5, cache_grace=0))
    running = asyncio.create_task(asyncio.to_thread(replay.run))
    rounds = 0
    while not running.done() or rounds < 3:
        await workload.run([(rng.choice(kinds), rng.randrange(50)) for _ in range(5)])
        await live.catch_up()
        rounds += 1
    result = await running
    assert result.status == "swapped" and not result.failures
    assert result.position > head_at_start  # it folded events written while it ran
    await workload.run([(rng.choice(kinds), rng.randrange(50)) for _ in range(10)])
    await live.catch_up()
    for report in await asyncio.to_thread(compare_with_replay, urls["owner"]):
        assert report.equal, report.to_json()
