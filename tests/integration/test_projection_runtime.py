"""The projector's runtime over a real PostgreSQL: redelivery, reordering and gaps change nothing;
counts stay equal to a count of the rows; poison is parked and what follows it waits."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.rows import dict_row

from event_store.postgres import PostgresEventStore
from projections import projects, tasks, users
from projections.catalog import MODELS
from projections.lag import LagMeter
from projections.model import ReadModel
from projections.runtime import Projector, Record, list_failures
from schemas.catalog import registry
from schemas.envelope import NO_STREAM, NewEvent, RecordedEvent
from tests.unit.projection_testkit import fold_rows, project_history, task_history, user_history


@pytest.fixture(scope="module")
async def iso_store(isolated_database_url: str) -> AsyncIterator[PostgresEventStore]:
    store = await PostgresEventStore.connect(isolated_database_url, max_size=8)
    yield store
    await store.close()


def projector(store: PostgresEventStore, name: str) -> Projector:
    return Projector(MODELS[name], store.pool, store.read_streams, registry(), consumer="test")


async def append_histories(store: PostgresEventStore, histories: dict[str, list[Any]], order: list[int]) -> list[RecordedEvent]:
    """Append the histories one event at a time, streams interleaved by ``order``; return them as stored."""
    queues = {s: [e.to_new_event() for e in events] for s, events in histories.items()}
    versions = dict.fromkeys(queues, 0)
    choices = iter(order)
    while any(queues.values()):
        live = [s for s in queues if queues[s]]
        s = live[next(choices, 0) % len(live)]
        await store.append(s, versions[s] or NO_STREAM, [queues[s].pop(0)])
        versions[s] += 1
    found = await store.read_streams(dict.fromkeys(histories, 0))
    return sorted((e for events in found.values() for e in events), key=lambda e: e.global_position)


async def rows_of(store: PostgresEventStore, model: ReadModel, ids: list[str]) -> dict[str, dict[str, Any]]:
    async with store.pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(f"SELECT * FROM {model.name} WHERE {model.key} = ANY(%s)", ([uuid.UUID(i) for i in ids],))
        return {f"{model.category}-{row[model.key]}": row for row in await cur.fetchall()}


def same_row(stored: dict[str, Any], folded: dict[str, Any], model: ReadModel) -> bool:
    def norm(v: Any) -> Any:
        return str(v) if isinstance(v, uuid.UUID) else v

    return all(norm(stored[c]) == norm(folded[c]) for c in model.columns)


deliveries = st.lists(st.tuples(st.integers(0, 10_000), st.booleans(), st.booleans()), min_size=1, max_size=80)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    task_histories=st.lists(task_history(project_id=uuid.UUID(int=1)), min_size=1, max_size=3),
    project=project_history(),
    user=user_history(),
    order=st.lists(st.integers(0, 10), max_size=40),
    noise=deliveries,
    batch=st.integers(1, 7),
)
async def test_any_redelivery_reordering_or_gap_gives_the_rows_of_one_in_order_pass(
    iso_store: PostgresEventStore, task_histories, project, user, order, noise, batch  # noqa: ANN001
) -> None:
    project_id = uuid.uuid4()
    histories: dict[str, list[Any]] = {f"project-{project.state.project_id}": project.history, f"user-{user.state.user_id}": user.history}
    for h in task_histories:  # the tasks belong to a fresh project of this example
        events = [e.model_copy(update={"project_id": project_id}) if e.TYPE == "task.submitted" else e for e in h.history]
        histories[f"task-{h.state.task_id}"] = events
    stored = await append_histories(iso_store, histories, order)
    # The log: every event at least once where it counts (each stream's last event), plus
    # duplicates of anything, earlier events dropped (gaps), all in a shuffled order.
    last = {e.stream: e for e in stored}
    log: list[RecordedEvent] = list(last.values())
    for pick, duplicate, keep in noise:
        event = stored[pick % len(stored)]
        if keep or duplicate:
            log.insert(pick % (len(log) + 1), event)
    for model in MODELS.values():
        mine = [e for e in log if e.stream.startswith(model.category + "-")]
        p = projector(iso_store, model.name)
        for start in range(0, len(mine), batch):
            part = mine[start : start + batch]
            await p.apply_batch([Record(e, "t", 0, start + i) for i, e in enumerate(part)])
        expected = fold_rows(model.apply, [e for e in stored if e.stream.startswith(model.category + "-")])
        found = await rows_of(iso_store, model, [s.partition("-")[2] for s in expected])
        assert set(found) == set(expected)
        for stream, row in expected.items():
            assert same_row(found[stream], row, model), (stream, found[stream], row)
    # Redelivering the whole log again changes nothing, counts included.
    async with iso_store.pool.connection() as conn:
        cur = await conn.execute("SELECT task_counts, counts_revision FROM projects WHERE project_id = %s", (project_id,))
        counts, revision = await cur.fetchone()
    assert {k: v for k, v in counts.items() if v} == dict(Counter(h.state.status for h in task_histories))
    await projector(iso_store, "tasks").apply_batch([Record(e, "t", 0, i) for i, e in enumerate(log) if e.stream.startswith("task-")])
    async with iso_store.pool.connection() as conn:
        cur = await conn.execute("SELECT task_counts, counts_revision FROM projects WHERE project_id = %s", (project_id,))
        assert await cur.fetchone() == (counts, revision)


async def test_a_poison_event_is_parked_and_what_follows_waits_until_retried(iso_store: PostgresEventStore) -> None:
    task_id, project_id = uuid.uuid4(), uuid.uuid4()
    stream = f"task-{task_id}"
    submitted = {"task_id": str(task_id), "project_id": str(project_id), "kind": "echo", "payload": {}, "priority": 5,
                 "max_attempts": 3, "timeout_seconds": 60}  # fmt: skip
    await iso_store.append(stream, NO_STREAM, [NewEvent("task.submitted", submitted)])
    # A started event the projector cannot read (no worker_id), then a valid one after it.
    await iso_store.append(stream, 1, [NewEvent("task.started", {"task_id": str(task_id), "attempt": 1})])
    await iso_store.append(stream, 2, [NewEvent("task.cancelled", {"task_id": str(task_id), "reason": "x"})])
    events = await iso_store.read_stream(stream)
    p = projector(iso_store, "tasks")
    outcome = await p.apply_batch([Record(e, "t", 0, i) for i, e in enumerate(events)])
    assert outcome.parked == [stream]
    (row,) = (await rows_of(iso_store, tasks.MODEL, [str(task_id)])).values()
    assert (row["version"], row["status"]) == (1, "queued")  # applied up to the poison, nothing after it
    failures = [f for f in await list_failures(iso_store.pool) if f["stream_id"] == stream]
    assert [(f["version"], f["type"]) for f in failures] == [(2, "task.started")]
    assert "worker_id" in failures[0]["error"]
    # Later records of the parked stream wait behind it.
    later = await p.apply_batch([Record(events[2], "t", 0, 9)])
    assert later.waiting == 1 and later.applied == 0
    # The lag meter does not count a parked stream as behind for ever.
    lag = (await LagMeter(iso_store.pool, [tasks.MODEL]).measure())["tasks"]
    assert lag.events >= 0
    # Retrying still fails: the event itself is wrong; it is parked again, not dropped.
    again = await p.retry_parked(stream)
    assert again.parked == [stream]
    assert [f["stream_id"] for f in await list_failures(iso_store.pool)].count(stream) == 1


async def test_a_retried_stream_is_applied_from_the_store(iso_store: PostgresEventStore) -> None:
    """An event parked because of an unknown type becomes applicable once the projection knows it."""
    user_id = uuid.uuid4()
    stream = f"user-{user_id}"
    data = {"user_id": str(user_id), "email": "a@b.co", "display_name": "A", "password_hash": "$argon2id$x", "role": "member"}
    await iso_store.append(stream, NO_STREAM, [NewEvent("user.registered", data)])
    await iso_store.append(stream, 1, [NewEvent("user.profile_updated", {"user_id": str(user_id), "display_name": "B"})])
    events = await iso_store.read_stream(stream)
    # A projector whose users projection does not yet know profile updates (an older release).
    old = ReadModel("users", "user", "user_id", users.MODEL.columns,
                    lambda row, e: users.apply(row, e) if e.type != "user.profile_updated" else (_ for _ in ()).throw(ValueError("unknown")))  # fmt: skip
    outdated = Projector(old, iso_store.pool, iso_store.read_streams, registry(), consumer="old")
    assert (await outdated.apply_batch([Record(e, "t", 0, i) for i, e in enumerate(events)])).parked == [stream]
    assert (await rows_of(iso_store, users.MODEL, [str(user_id)]))[stream]["display_name"] == "A"
    # The fixed release retries the stream: applied, failure resolved.
    outcome = await projector(iso_store, "users").retry_parked(stream)
    assert outcome.applied == 1 and not outcome.parked
    assert (await rows_of(iso_store, users.MODEL, [str(user_id)]))[stream]["display_name"] == "B"
    assert stream not in [f["stream_id"] for f in await list_failures(iso_store.pool)]


async def test_a_task_seen_before_its_project_keeps_its_count(iso_store: PostgresEventStore) -> None:
    """The topics are consumed independently: counts made before the project row survive it."""
    project_id, owner, task_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    submitted = {"task_id": str(task_id), "project_id": str(project_id), "kind": "echo", "payload": {}, "priority": 5,
                 "max_attempts": 3, "timeout_seconds": 60}  # fmt: skip
    await iso_store.append(f"task-{task_id}", NO_STREAM, [NewEvent("task.submitted", submitted)])
    await iso_store.append(f"project-{project_id}", NO_STREAM,
                           [NewEvent("project.created", {"project_id": str(project_id), "owner_id": str(owner), "name": "p"})])  # fmt: skip
    (task_event,) = await iso_store.read_stream(f"task-{task_id}")
    (project_event,) = await iso_store.read_stream(f"project-{project_id}")
    await projector(iso_store, "tasks").apply_batch([Record(task_event, "t", 0, 0)])
    from projections.queries import get_row

    assert await get_row(iso_store.pool, "projects", project_id) is None  # a stub is invisible
    await projector(iso_store, "projects").apply_batch([Record(project_event, "p", 0, 0)])
    row = await get_row(iso_store.pool, "projects", project_id)
    assert row is not None and row["task_counts"] == {"queued": 1} and row["name"] == "p"


async def test_tracking_is_written_per_partition_with_the_batch(iso_store: PostgresEventStore, unique: str) -> None:
    user_ids = [uuid.uuid4() for _ in range(3)]
    for n, user_id in enumerate(user_ids):
        data = {"user_id": str(user_id), "email": f"t{n}@b.co", "display_name": "T", "password_hash": "$argon2id$x", "role": "member"}
        await iso_store.append(f"user-{user_id}", NO_STREAM, [NewEvent("user.registered", data)])
    events = [e for u in user_ids for e in await iso_store.read_stream(f"user-{u}")]
    topic = f"topic-{unique}"
    await projector(iso_store, "users").apply_batch(
        [Record(events[0], topic, 0, 5), Record(events[1], topic, 1, 7), Record(events[2], topic, 0, 6)]
    )
    async with iso_store.pool.connection() as conn:
        cur = await conn.execute(
            'SELECT partition, "offset", global_position FROM projection_tracking WHERE topic = %s ORDER BY partition', (topic,)
        )
        assert await cur.fetchall() == [(0, 6, events[2].global_position), (1, 7, events[1].global_position)]


async def test_projects_are_visible_only_once_created(iso_store: PostgresEventStore) -> None:
    assert projects.MODEL.owns(f"project-{uuid.uuid4()}") and not projects.MODEL.owns("project-nope")
