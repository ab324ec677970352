"""The read side as it runs: relay and projectors as processes, on tansu and on Apache Kafka.

Each test has a database of its own, so the processes it starts see only its events.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from psycopg.rows import dict_row

from event_store.checkpoints import Checkpoints
from event_store.postgres import PostgresEventStore
from gateway.auth import build_auth
from projections.catalog import MODELS
from schemas.envelope import NO_STREAM, NewEvent
from taskstream import embedded
from taskstream.settings import Settings
from tests.conftest import create_database
from tests.support import processes
from tests.support.stack import serve_gateway, wait_until_projecting
from tests.unit.projection_testkit import fold_rows

pytestmark = pytest.mark.kafka


@pytest.fixture
async def settings(database_urls: dict[str, str], redis_url: str, kafka_bootstrap: str, unique: str) -> Settings:
    return Settings(
        database_url=create_database(database_urls),
        redis_url=redis_url,
        kafka_bootstrap_servers=kafka_bootstrap,
        kafka_topic_prefix=f"rs{unique}.",
        projector_group_id=f"projector-{unique}",
        jwt_secret=secrets.token_urlsafe(48),
        idempotency_secret=secrets.token_urlsafe(32),
        http_port=embedded.free_port(),
        auth_rate_limit_per_minute=0,
        projector_session_timeout=3.0,
        metrics_port=0,  # /metrics of relays and projectors on free ports
        read_consistency_timeout=20.0,
    )


@pytest.fixture
def start(server_dir: Path, unique: str) -> AsyncIterator[Callable[..., embedded.ServerProcess]]:
    started: list[embedded.ServerProcess] = []

    def run(name: str, args: list[str], settings: Settings) -> embedded.ServerProcess:
        child = processes.start(f"{name}-{unique}-{len(started)}", args, settings, server_dir / "logs")
        started.append(child)
        return child

    yield run  # type: ignore[misc]
    for child in started:
        child.stop()


def admin_headers(settings: Settings) -> dict[str, str]:
    issuer, _ = build_auth(settings)
    assert issuer is not None
    return {"Authorization": f"Bearer {issuer.issue(str(uuid.uuid4()), 'admin')}"}


async def test_write_through_http_then_read_back_with_and_without_the_token(settings: Settings, start) -> None:  # noqa: ANN001
    children = [start("relay", ["relay"], settings), start("project", ["project"], settings)]
    await wait_until_projecting(settings.database_url, children)
    admin = admin_headers(settings)
    async with serve_gateway(settings) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        created = await client.post("/v1/projects", json={"name": "log"}, headers=admin)
        assert created.status_code == 201, created.text
        project_id = created.json()["id"]
        submitted = await client.post(f"/v1/projects/{project_id}/tasks", json={"kind": "echo"}, headers=admin)
        task_id, token = submitted.json()["id"], submitted.headers["Consistency-Token"]
        now = await client.get(f"/v1/tasks/{task_id}", params={"consistency_token": token}, headers=admin)
        assert now.status_code == 200 and now.json()["status"] == "queued"
        listed = await client.get(f"/v1/projects/{project_id}/tasks", params={"consistency_token": token}, headers=admin)
        assert [t["id"] for t in listed.json()["items"]] == [task_id]
        async with asyncio.timeout(20):
            while (r := await client.get(f"/v1/projects/{project_id}", headers=admin)).status_code != 200 or r.json()["task_counts"]["queued"] != 1:
                await asyncio.sleep(0.05)
        assert "Read-Model-Lag-Seconds" in r.headers
    # The records came through this broker: the projector tracked this test's topics.
    store = await PostgresEventStore.connect(settings.database_url, min_size=1, max_size=1)
    try:
        async with store.pool.connection() as conn:
            cur = await conn.execute("SELECT DISTINCT topic FROM projection_tracking")
            topics = {row[0] for row in await cur.fetchall()}
    finally:
        await store.close()
    assert {f"{settings.kafka_topic_prefix}project", f"{settings.kafka_topic_prefix}task"} <= topics


async def write_backlog(store: PostgresEventStore, projects: int, tasks_per_project: int) -> None:
    """Valid histories straight into the store: projects with tasks in every status."""
    owner = uuid.uuid4()
    for p in range(projects):
        project_id = uuid.uuid4()
        await store.append(f"project-{project_id}", NO_STREAM,
                           [NewEvent("project.created", {"project_id": str(project_id), "owner_id": str(owner), "name": f"p{p}"})])  # fmt: skip
        appends = []
        for t in range(tasks_per_project):
            task_id = uuid.uuid4()
            events = [NewEvent("task.submitted", {"task_id": str(task_id), "project_id": str(project_id), "kind": "echo",
                                                  "payload": {"t": t}, "priority": 5, "max_attempts": 3, "timeout_seconds": 60})]  # fmt: skip
            if t % 3:
                events.append(NewEvent("task.started", {"task_id": str(task_id), "worker_id": "w", "attempt": 1}))
            if t % 3 == 2:
                events.append(NewEvent("task.succeeded", {"task_id": str(task_id), "attempt": 1, "summary": "ok"}))
            appends.append(store.append(f"task-{task_id}", NO_STREAM, events))
        await asyncio.gather(*appends)


async def read_models_equal_a_fold(store: PostgresEventStore) -> tuple[bool, str]:
    """Whether every read model equals a fresh fold of the whole events table."""
    events = []
    after = 0
    while batch := await store.read_all(after, 5000):
        events += batch
        after = batch[-1].global_position
    async with store.pool.connection() as conn:
        for model in MODELS.values():
            expected = fold_rows(model.apply, [e for e in events if e.category == model.category])
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(f"SELECT * FROM {model.name} WHERE version > 0")
            found = {f"{model.category}-{r[model.key]}": r for r in await cur.fetchall()}
            if set(found) != set(expected):
                return False, f"{model.name}: {len(found)} rows, {len(expected)} expected"
            for stream, row in expected.items():
                if any(str(found[stream][c]) != str(row[c]) for c in model.columns if c not in ("created_at", "updated_at", "submitted_at", "started_at", "succeeded_at")):
                    return False, f"{model.name}: {stream} differs"
        cur = await conn.execute("SELECT project_id, task_counts FROM projects")
        counts = {str(p): {k: v for k, v in c.items() if v} for p, c in await cur.fetchall()}
        tasks = fold_rows(MODELS["tasks"].apply, [e for e in events if e.category == "task"])
        per_project: dict[str, Counter[str]] = {}
        for row in tasks.values():
            per_project.setdefault(str(row["project_id"]), Counter())[row["status"]] += 1
        if counts != {p: dict(c) for p, c in per_project.items()}:
            return False, "task counts differ from a count of the rows"
    return True, ""


async def wait_for_fold(store: PostgresEventStore, children: list[embedded.ServerProcess], timeout: float = 120) -> None:
    async with asyncio.timeout(timeout):
        while True:
            for child in children:
                assert child.alive(), child.log_tail()
            ok, why = await read_models_equal_a_fold(store)
            if ok:
                return
            await asyncio.sleep(0.5)


async def backlog_on_the_log(store: PostgresEventStore, settings: Settings, start):  # noqa: ANN001, ANN201
    """About 3,500 events written, and all of them on the log (a relay started), before any projector."""
    await write_backlog(store, projects=6, tasks_per_project=250)
    relay = start("relay", ["relay"], settings)
    head = await store.head_position()
    async with asyncio.timeout(60):
        while await Checkpoints(store.pool).get(settings.relay_checkpoint_name) < head:
            assert relay.alive(), relay.log_tail()
            await asyncio.sleep(0.1)
    return relay


async def first_rows(store: PostgresEventStore, projector) -> int:  # noqa: ANN001
    """The number of task rows once ``projector`` has written some."""
    async with asyncio.timeout(60):
        while True:
            async with store.pool.connection() as conn:
                cur = await conn.execute("SELECT count(*) FROM tasks")
                (done,) = await cur.fetchone()
            assert projector.alive(), projector.log_tail()
            if done > 0:
                return done
            await asyncio.sleep(0.02)


async def test_a_projector_killed_mid_backlog_resumes_and_loses_or_doubles_nothing(settings: Settings, start) -> None:  # noqa: ANN001
    store = await PostgresEventStore.connect(settings.database_url, max_size=8)
    try:
        relay = await backlog_on_the_log(store, settings, start)
        first = start("project", ["project"], replace(settings, projector_batch_size=50))
        done = await first_rows(store, first)
        os.killpg(first.process.pid, signal.SIGKILL)
        first.process.wait(10)
        assert done < 1500, "the projector finished before it could be killed: make the backlog larger"
        second = start("project", ["project"], settings)
        await wait_for_fold(store, [relay, second])
    finally:
        await store.close()


async def test_two_projectors_share_the_partitions(settings: Settings, start) -> None:  # noqa: ANN001
    store = await PostgresEventStore.connect(settings.database_url, max_size=8)
    try:
        children = [start("relay", ["relay"], settings), start("project", ["project"], settings), start("project", ["project"], settings)]
        await wait_until_projecting(settings.database_url, children)
        # The first projection proves one process joined, not both: the second may still be
        # joining, and one process alone applies a small backlog before the rebalance. So more
        # is written, a round at a time, until both have applied task partitions.
        consumers: set[str] = set()
        async with asyncio.timeout(60):
            while len(consumers) < 2:
                await write_backlog(store, projects=8, tasks_per_project=40)
                await wait_for_fold(store, children)
                async with store.pool.connection() as conn:
                    cur = await conn.execute("SELECT DISTINCT consumer FROM projection_tracking WHERE projection = 'tasks'")
                    consumers = {row[0] for row in await cur.fetchall()}
        assert len(consumers) == 2, consumers  # each process applied some of the task partitions
    finally:
        await store.close()


async def test_a_projector_joining_mid_backlog_takes_partitions_over_and_nothing_is_lost_or_doubled(settings: Settings, start) -> None:  # noqa: ANN001
    """A rebalance while the first projector has records buffered and batches in flight: its
    revoked partitions go to the second from the committed offsets, and the rows (and the task
    counts, kept by difference) come out as one in-order pass would give them."""
    store = await PostgresEventStore.connect(settings.database_url, max_size=8)
    try:
        relay = await backlog_on_the_log(store, settings, start)
        small = replace(settings, projector_batch_size=20)
        first = start("project", ["project"], small)
        done = await first_rows(store, first)
        assert done < 1500, "the projector finished before the second joined: make the backlog larger"
        second = start("project", ["project"], small)
        await wait_for_fold(store, [relay, first, second])
    finally:
        await store.close()


async def read_name(client: httpx.AsyncClient, project_id: str, headers: dict[str, str]) -> Any:
    r = await client.get(f"/v1/projects/{project_id}", headers=headers)
    return r.json().get("name") if r.status_code == 200 else None


async def test_redis_down_then_back_reads_work_and_nothing_stale_is_served(settings: Settings, start, server_dir: Path, unique: str) -> None:  # noqa: ANN001
    port = embedded.free_port()
    valkey = embedded.start_valkey(server_dir / f"valkey-{unique}", port)
    try:
        settings = replace(settings, redis_url=valkey.url)
        children = [start("relay", ["relay"], settings), start("project", ["project"], settings)]
        await wait_until_projecting(settings.database_url, children)
        admin = admin_headers(settings)
        async with serve_gateway(settings) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
            created = await client.post("/v1/projects", json={"name": "before"}, headers=admin)
            project_id = created.json()["id"]
            token = {"consistency_token": created.headers["Consistency-Token"]}
            assert (await client.get(f"/v1/projects/{project_id}", params=token, headers=admin)).status_code == 200
            async with asyncio.timeout(20):  # cached (Redis and near-cache) without a token
                while await read_name(client, project_id, admin) != "before":
                    await asyncio.sleep(0.05)
            valkey.stop()
            renamed = await client.patch(f"/v1/projects/{project_id}", json={"name": "during"}, headers=admin)
            assert renamed.status_code == 200  # writes do not need Redis
            token = {"consistency_token": renamed.headers["Consistency-Token"]}
            assert (await client.get(f"/v1/projects/{project_id}", params=token, headers=admin)).json()["name"] == "during"
            async with asyncio.timeout(20):
                while await read_name(client, project_id, admin) != "during":
                    await asyncio.sleep(0.05)
            metrics = (await client.get("/metrics")).text
            assert 'taskstream_cache_requests_total{result="fallback"}' in metrics
            valkey = embedded.start_valkey(server_dir / f"valkey-{unique}", port)
            await asyncio.sleep(1.5)  # the near-cache reconnects; Redis answers again
            for _ in range(20):
                assert await read_name(client, project_id, admin) == "during"
            renamed = await client.patch(f"/v1/projects/{project_id}", json={"name": "after"}, headers=admin)
            async with asyncio.timeout(20):
                while await read_name(client, project_id, admin) != "after":
                    await asyncio.sleep(0.05)
    finally:
        valkey.stop()


async def test_a_write_through_one_gateway_shows_through_the_near_cache_of_another(settings: Settings, start) -> None:  # noqa: ANN001
    children = [start("relay", ["relay"], settings), start("project", ["project"], settings)]
    await wait_until_projecting(settings.database_url, children)
    admin = admin_headers(settings)
    other = replace(settings, http_port=embedded.free_port())
    async with (
        serve_gateway(settings) as url_a,
        serve_gateway(other) as url_b,
        httpx.AsyncClient(base_url=url_a, timeout=30) as a,
        httpx.AsyncClient(base_url=url_b, timeout=30) as b,
    ):
        created = await a.post("/v1/projects", json={"name": "one"}, headers=admin)
        project_id = created.json()["id"]
        async with asyncio.timeout(20):
            while await read_name(b, project_id, admin) != "one":
                await asyncio.sleep(0.05)
        for _ in range(5):  # now served from b's near-cache
            assert await read_name(b, project_id, admin) == "one"
        assert 'taskstream_cache_requests_total{result="near_hit"}' in (await b.get("/metrics")).text
        renamed = await a.patch(f"/v1/projects/{project_id}", json={"name": "two"}, headers=admin)
        assert renamed.status_code == 200
        async with asyncio.timeout(20):
            while await read_name(b, project_id, admin) != "two":
                await asyncio.sleep(0.05)
