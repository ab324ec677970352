"""The worker pool end to end: real gateway, relay, broker, projector and `taskstream work` processes.

Outcomes are seen as a user sees them, through the query API (``GET /v1/tasks/{id}``: status,
attempts, result reference, last error, served from the read model the projector keeps from the
broker under test), and exactly-once is checked in the task's stream in the event store."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from event_store.postgres import PostgresEventStore
from taskstream import embedded
from taskstream.settings import Settings
from tests.e2e.conftest import User
from tests.support.receiver import Receiver, receiver
from tests.support.worker_pool import Pool, serve_gateway, worker_pool

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def pool_folder() -> AsyncIterator[Path]:
    import shutil

    path = Path(tempfile.mkdtemp(prefix="taskstream-workers-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
async def pool(store: PostgresEventStore, database_url: str, redis_url: str, kafka_bootstrap: str, pool_folder: Path) -> AsyncIterator[Pool]:
    async with worker_pool(store, database_url, kafka_bootstrap, pool_folder, projector=True, redis_url=redis_url) as p:
        yield p


@pytest.fixture(scope="module")
async def api(gateway_settings: Settings, pool_folder: Path) -> AsyncIterator[str]:
    """A gateway sharing the workers' blob folder, refusing unknown kinds, allowing loopback webhooks."""
    settings = dataclasses.replace(
        gateway_settings, http_port=embedded.free_port(), blob_dir=pool_folder / "blobs", task_kinds_check=True,
        webhook_allow_loopback=True, blob_link_ttl_seconds=60,
    )  # fmt: skip
    async with serve_gateway(settings) as url:
        yield url


@pytest.fixture
async def http(api: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api, timeout=10) as c:
        yield c


async def submit(http: httpx.AsyncClient, owner: User, project: str, kind: str, payload: dict | None = None, **spec: object) -> str:
    response = await http.post(f"/v1/projects/{project}/tasks", json={"kind": kind, "payload": payload or {}, **spec}, headers=owner.auth)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def types(events: list) -> list[str]:
    return [e.type for e in events]


async def test_each_built_in_kind_succeeds(pool: Pool, http: httpx.AsyncClient, new_user, new_project) -> None:  # noqa: ANN001
    owner = await new_user()
    project = await new_project(owner)
    async with receiver() as rx:
        target = rx.on("/ping", 200)
        ids = {
            "echo": await submit(http, owner, project, "echo", {"hello": "world", "n": [1, 2]}),
            "sleep": await submit(http, owner, project, "sleep", {"seconds": 0.2}),
            "http.request": await submit(http, owner, project, "http.request", {"url": target, "method": "POST", "json": {"a": 1}}),
        }
        done = {kind: await pool.wait_view(http, owner.auth, task_id, "succeeded", "failed") for kind, task_id in ids.items()}
        assert json.loads(rx.at("/ping")[0].body) == {"a": 1}
    assert all(v["status"] == "succeeded" and v["attempts"] == 1 for v in done.values()), done
    assert done["echo"]["result"] == {"hello": "world", "n": [1, 2]} and done["echo"]["result_ref"] is None
    assert done["sleep"]["result"]["slept_seconds"] >= 0.2
    assert done["http.request"]["result"]["status"] == 200
    for task_id in ids.values():
        assert types(await pool.events(task_id)) == ["task.submitted", "task.started", "task.succeeded"]
    # the export holds the project's stream and every task stream of the project, as JSON Lines
    export = await submit(http, owner, project, "project.export")
    view = await pool.wait_view(http, owner.auth, export, "succeeded", "failed")
    assert view["status"] == "succeeded" and view["result_ref"].startswith("blob://local/exports/"), view
    result = (await http.get(f"/v1/tasks/{export}/result", headers=owner.auth)).json()
    assert result["result_ref"] == view["result_ref"] and result["download"]["url"]
    lines = [json.loads(line) for line in (await http.get(result["download"]["url"])).content.splitlines()]
    streams = {line["stream"] for line in lines}
    assert f"project-{project}" in streams and {f"task-{i}" for i in ids.values()} <= streams
    assert result["result"]["events"] == len(lines)


async def test_an_unknown_kind_is_refused_at_submission(pool: Pool, http: httpx.AsyncClient, new_user, new_project) -> None:  # noqa: ANN001
    owner = await new_user()
    project = await new_project(owner)
    response = await http.post(f"/v1/projects/{project}/tasks", json={"kind": "no.such.kind"}, headers=owner.auth)
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "kind"


async def test_an_unknown_kind_that_got_in_fails_clearly(pool: Pool, client: httpx.AsyncClient, http: httpx.AsyncClient, new_user, new_project) -> None:  # noqa: ANN001, E501
    owner = await new_user()
    project = await new_project(owner)
    # the shared gateway does not check kinds: the worker must fail the task, not hang
    response = await client.post(f"/v1/projects/{project}/tasks", json={"kind": "no.such.kind", "max_attempts": 3}, headers=owner.auth)
    task_id = response.json()["id"]
    view = await pool.wait_view(http, owner.auth, task_id, "failed", "succeeded")
    assert view["status"] == "failed" and view["attempts"] == 1 and not view["retry_scheduled"], view
    assert "no handler for task kind 'no.such.kind'" in view["last_error"]
    assert types(await pool.events(task_id)) == ["task.submitted", "task.started", "task.failed"]


async def test_workers_share_the_work(pool: Pool, http: httpx.AsyncClient, new_user, new_project) -> None:  # noqa: ANN001
    owner = await new_user()
    project = await new_project(owner)
    ids = [await submit(http, owner, project, "sleep", {"seconds": 0.5}) for _ in range(8)]
    workers = set()
    for task_id in ids:
        view = await pool.wait_view(http, owner.auth, task_id, "succeeded", "failed")
        assert view["status"] == "succeeded" and view["attempts"] == 1, view
        events = await pool.events(task_id)
        assert types(events) == ["task.submitted", "task.started", "task.succeeded"]
        assert view["worker_id"] == events[1].data["worker_id"]
        workers.add(view["worker_id"])
        assert uuid.UUID(events[1].data["lease_id"]) and events[1].data["lease_seconds"] == 3.0
    assert len(workers) == 2  # 8 half-second tasks, 2 slots per worker: both workers ran some


async def test_retries_with_backoff_then_success(pool: Pool, http: httpx.AsyncClient, new_user, new_project) -> None:  # noqa: ANN001
    owner = await new_user()
    project = await new_project(owner)
    async with receiver() as rx:
        url = rx.on("/flaky", 500, 500, 200)
        task_id = await submit(http, owner, project, "http.request", {"url": url}, max_attempts=3)
        view = await pool.wait_view(http, owner.auth, task_id, "succeeded", "failed")
    assert view["status"] == "succeeded" and view["attempts"] == 3 and "answered 500" in view["last_error"], view
    events = await pool.events(task_id)
    assert types(events) == ["task.submitted", *["task.started", "task.failed"] * 2, "task.started", "task.succeeded"]
    failures = [e for e in events if e.type == "task.failed"]
    assert all(f.data["retry_scheduled"] and "answered 500" in f.data["error"] for f in failures)
    assert [e.data["attempt"] for e in events if e.type == "task.started"] == [1, 2, 3]
    # backoff: the retry did not start before its delay (base 0.2 s: at least 0.1 s with jitter)
    first_fail, second_start = failures[0], [e for e in events if e.type == "task.started"][1]
    assert (second_start.recorded_at - first_fail.recorded_at).total_seconds() >= 0.1


async def test_final_failure_dead_list_and_requeue(pool: Pool, http: httpx.AsyncClient, new_user, new_project, issuer) -> None:  # noqa: ANN001
    owner = await new_user()
    project = await new_project(owner)
    admin = {"Authorization": f"Bearer {issuer.issue(str(uuid.uuid4()), 'admin')}"}
    async with receiver() as rx:
        url = rx.on("/down", 503)
        task_id = await submit(http, owner, project, "http.request", {"url": url}, max_attempts=2)
        view = await pool.wait_view(http, owner.auth, task_id, "failed", "succeeded")
        assert view["status"] == "failed" and view["attempts"] == 2 and not view["retry_scheduled"] and "503" in view["last_error"], view
        events = await pool.events(task_id)
        assert types(events)[-1] == "task.failed" and not events[-1].data["retry_scheduled"]
        async with asyncio.timeout(10):
            while (row := await pool.row(task_id)) is None or row[0] != "dead":
                await asyncio.sleep(0.1)
        dead = await http.get("/v1/admin/tasks/dead", headers=admin)
        assert dead.status_code == 200
        [item] = [i for i in dead.json()["items"] if i["task_id"] == task_id]
        assert item["attempts"] == 2 and "503" in item["last_error"]
        assert (await http.get("/v1/admin/tasks/dead", headers=owner.auth)).status_code == 403
        assert (await http.post(f"/v1/tasks/{task_id}/retry", headers=owner.auth)).status_code == 403
        rx.on("/down", 200)
        requeued = await http.post(f"/v1/tasks/{task_id}/retry", json={"reason": "receiver fixed"}, headers=admin)
        assert requeued.status_code == 202, requeued.text
        view = await pool.wait_view(http, owner.auth, task_id, "succeeded", timeout=30)
    assert view["attempts"] == 3
    events = await pool.events(task_id)
    assert types(events)[-3:] == ["task.requeued", "task.started", "task.succeeded"]
    assert events[-1].data["attempt"] == 3
    again = await http.post(f"/v1/tasks/{task_id}/retry", headers=admin)
    assert again.status_code == 409  # only a failed task can be requeued


async def test_a_task_past_its_timeout_fails_as_timed_out(pool: Pool, http: httpx.AsyncClient, new_user, new_project) -> None:  # noqa: ANN001
    owner = await new_user()
    project = await new_project(owner)
    task_id = await submit(http, owner, project, "sleep", {"seconds": 60}, timeout_seconds=1)
    view = await pool.wait_view(http, owner.auth, task_id, "failed", "succeeded", timeout=30)
    assert view["status"] == "failed" and view["last_error"] == "timed out after 1 s" and not view["retry_scheduled"], view
    assert view["attempts"] == 1
    assert types(await pool.events(task_id)) == ["task.submitted", "task.started", "task.failed"]


async def test_cancel_a_running_task_stops_it(pool: Pool, http: httpx.AsyncClient, new_user, new_project) -> None:  # noqa: ANN001
    owner = await new_user()
    project = await new_project(owner)
    task_id = await submit(http, owner, project, "sleep", {"seconds": 60})
    running = await pool.wait_view(http, owner.auth, task_id, "running")
    assert running["attempts"] == 1 and running["worker_id"]
    assert (await http.post(f"/v1/tasks/{task_id}/cancel", headers=owner.auth)).status_code == 202
    assert (await pool.wait_view(http, owner.auth, task_id, "cancelled"))["cancelled_at"]
    # the handler was stopped: its worker put the task at rest long before the 60 s sleep ends
    async with asyncio.timeout(10):
        while (row := await pool.row(task_id)) is None or row[0] != "cancelled":
            await asyncio.sleep(0.1)
    assert types(await pool.events(task_id)) == ["task.submitted", "task.started", "task.cancelled"]


async def test_a_cancelled_task_is_never_started(pool: Pool, http: httpx.AsyncClient, new_user, new_project) -> None:  # noqa: ANN001
    owner = await new_user()
    project = await new_project(owner)
    busy = [await submit(http, owner, project, "sleep", {"seconds": 3}) for _ in range(4)]  # every slot of the pool
    for task_id in busy:
        await pool.wait_status(task_id, "running")  # from the stream: the read model may show it a moment later
    waiting = await submit(http, owner, project, "echo", {"x": 1})
    assert (await http.post(f"/v1/tasks/{waiting}/cancel", headers=owner.auth)).status_code == 202
    for task_id in busy:
        await pool.wait_view(http, owner.auth, task_id, "succeeded")
    control = await submit(http, owner, project, "echo", {"x": 2})  # the pool is free again and runs new work
    await pool.wait_view(http, owner.auth, control, "succeeded")
    view = await pool.wait_view(http, owner.auth, waiting, "cancelled")
    assert view["attempts"] == 0 and view["started_at"] is None and view["worker_id"] is None, view
    assert types(await pool.events(waiting)) == ["task.submitted", "task.cancelled"]


async def test_large_results_go_to_blob_storage_with_signed_links(pool: Pool, http: httpx.AsyncClient, new_user, new_project) -> None:  # noqa: ANN001
    owner = await new_user()
    project = await new_project(owner)
    payload = {"blob": "x" * 40_000}
    task_id = await submit(http, owner, project, "echo", payload)
    view = await pool.wait_view(http, owner.auth, task_id, "succeeded", "failed")
    assert view["status"] == "succeeded" and view["result"] is None and view["result_ref"].startswith("blob://local/results/"), view
    result = (await http.get(f"/v1/tasks/{task_id}/result", headers=owner.auth)).json()
    url = result["download"]["url"]
    assert json.loads((await http.get(url)).content) == payload
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    altered = {**query, "expires": str(int(query["expires"]) + 3600)}
    other_key = {**query, "key": query["key"].replace("attempt-1", "attempt-2")}
    expired = {**query, "expires": "1000"}
    signature = query["signature"]  # its first character altered: always another signature (a last one may only hold padding bits)
    forged = {**query, "signature": ("B" if signature[0] == "A" else "A") + signature[1:]}
    for bad in (altered, other_key, expired, forged):
        refused = await http.get(f"/v1/blobs?{urlencode(bad)}")
        assert refused.status_code == 403, bad
    stranger = await new_user()
    assert (await http.get(f"/v1/tasks/{task_id}/result", headers=stranger.auth)).status_code == 404


async def test_worker_metrics(pool: Pool) -> None:
    async with httpx.AsyncClient(timeout=5) as c:
        async with asyncio.timeout(30):
            while True:
                try:
                    text = (await c.get(f"http://127.0.0.1:{pool.workers[0].metrics_port}/metrics")).text
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.2)
    for name in ("taskstream_task_queue_depth", "taskstream_worker_busy_slots", "taskstream_worker_slots"):
        assert f"\n{name}" in text or text.startswith(name) or f"# TYPE {name} gauge" in text
    assert 'taskstream_worker_slots{worker="' in text and "} 2.0" in text


async def test_a_task_longer_than_the_lease_keeps_it_by_renewal(pool: Pool, http: httpx.AsyncClient, new_user, new_project) -> None:  # noqa: ANN001
    owner = await new_user()
    project = await new_project(owner)
    task_id = await submit(http, owner, project, "sleep", {"seconds": 7})  # the pool's lease is 3 s
    view = await pool.wait_view(http, owner.auth, task_id, "succeeded", "failed", timeout=60)
    assert view["status"] == "succeeded" and view["attempts"] == 1, view
    events = await pool.events(task_id)
    assert types(events) == ["task.submitted", "task.started", "task.succeeded"]  # never taken over


async def test_sigterm_mid_task_hands_the_task_over(pool: Pool, http: httpx.AsyncClient, new_user, new_project) -> None:  # noqa: ANN001
    owner = await new_user()
    project = await new_project(owner)
    task_id = await submit(http, owner, project, "sleep", {"seconds": 4}, max_attempts=3)
    events = await pool.wait_status(task_id, "running")
    stopping = pool.by_worker_id(events[-1].data["worker_id"])
    await asyncio.to_thread(stopping.stop)  # SIGTERM: 1 s of grace (the pool's setting), then the attempt is given up
    pool.spawn()
    view = await pool.wait_view(http, owner.auth, task_id, "succeeded", "failed", timeout=60)
    assert view["status"] == "succeeded" and view["attempts"] == 2 and "stopped during the attempt" in view["last_error"], view
    events = await pool.events(task_id)
    assert types(events) == ["task.submitted", "task.started", "task.failed", "task.started", "task.succeeded"]
    assert "stopped during the attempt" in events[2].data["error"] and events[2].data["retry_scheduled"]
    assert stopping.process.returncode == 0


async def test_kill_9_mid_task_finishes_exactly_once(pool: Pool, http: httpx.AsyncClient, new_user, new_project) -> None:  # noqa: ANN001
    owner = await new_user()
    project = await new_project(owner)
    task_id = await submit(http, owner, project, "sleep", {"seconds": 2}, max_attempts=3)
    events = await pool.wait_status(task_id, "running")
    victim = pool.by_worker_id(events[-1].data["worker_id"])
    victim.kill()
    pool.spawn()  # keep two workers for the tests after this one
    view = await pool.wait_view(http, owner.auth, task_id, "succeeded", "failed", timeout=60)
    assert view["status"] == "succeeded" and view["attempts"] == 2 and "lost" in view["last_error"], view
    events = await pool.events(task_id)
    assert types(events) == ["task.submitted", "task.started", "task.failed", "task.started", "task.succeeded"]
    assert "lost" in events[2].data["error"] and events[2].data["retry_scheduled"]
    assert events[3].data["worker_id"] != events[1].data["worker_id"]
    await asyncio.sleep(4)  # more than a lease: nothing runs it again
    assert types(await pool.events(task_id)).count("task.succeeded") == 1
