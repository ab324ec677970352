"""The query API end to end: write through HTTP, read back through the projector and the cache."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

import httpx

from taskstream import embedded
from taskstream.settings import Settings
from tests.e2e.conftest import User
from tests.support.stack import serve_gateway


async def read_until(client: httpx.AsyncClient, url: str, user: User, ok, timeout: float = 20):  # noqa: ANN001, ANN201
    """Poll without a token until ``ok(answer)``; the read model is eventually consistent."""
    async with asyncio.timeout(timeout):
        while True:
            response = await client.get(url, headers=user.auth)
            if ok(response):
                return response
            await asyncio.sleep(0.05)


async def test_a_task_reads_back_with_the_token_at_once(client: httpx.AsyncClient, new_user, new_project) -> None:
    owner = await new_user()
    project_id = await new_project(owner)
    submitted = await client.post(f"/v1/projects/{project_id}/tasks", json={"kind": "echo", "payload": {"n": 1}}, headers=owner.auth)
    assert submitted.status_code == 202, submitted.text
    token = submitted.headers["Consistency-Token"]
    assert submitted.json()["consistency_token"] == token
    task_id = submitted.json()["id"]
    answer = await client.get(f"/v1/tasks/{task_id}", params={"consistency_token": token}, headers=owner.auth)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["id"] == task_id and body["status"] == "queued" and body["payload"] == {"n": 1}
    assert answer.headers["ETag"] == '"1"'
    assert "Read-Model-Lag-Seconds" not in answer.headers
    # the project counts moved in the same transaction: the same token reads them
    project = await client.get(f"/v1/projects/{project_id}", params={"consistency_token": token}, headers=owner.auth)
    assert project.status_code == 200
    assert project.json()["task_counts"]["queued"] == 1


async def test_reads_without_a_token_converge_and_say_their_lag(client: httpx.AsyncClient, new_user, new_project) -> None:
    owner = await new_user()
    project_id = await new_project(owner)
    renamed = await client.patch(f"/v1/projects/{project_id}", json={"name": f"renamed-{uuid.uuid4().hex[:6]}"}, headers=owner.auth)
    assert renamed.status_code == 200
    answer = await read_until(client, f"/v1/projects/{project_id}", owner, lambda r: r.status_code == 200 and r.json()["version"] == 2)
    assert answer.json()["name"].startswith("renamed-")
    assert float(answer.headers["Read-Model-Lag-Seconds"]) >= 0
    assert int(answer.headers["Read-Model-Lag-Events"]) >= 0
    again = await client.get(f"/v1/projects/{project_id}", headers={**owner.auth, "If-None-Match": answer.headers["ETag"]})
    assert again.status_code == 304


async def test_visibility_is_the_same_as_for_writes(client: httpx.AsyncClient, new_user, new_project) -> None:
    owner, stranger, admin = await new_user(), await new_user(), await new_user("admin")
    project_id = await new_project(owner)
    submitted = await client.post(f"/v1/projects/{project_id}/tasks", json={"kind": "echo"}, headers=owner.auth)
    token = {"consistency_token": submitted.headers["Consistency-Token"]}
    task_id = submitted.json()["id"]
    for path in (f"/v1/projects/{project_id}", f"/v1/tasks/{task_id}", f"/v1/projects/{project_id}/tasks"):
        assert (await client.get(path, params=token, headers=stranger.auth)).status_code == 404, path
        assert (await client.get(path, params=token, headers=admin.auth)).status_code == 200, path
    assert (await client.get(f"/v1/users/{owner.id}", headers=stranger.auth)).status_code == 404
    me = await client.get("/v1/users/me", params=token, headers=owner.auth)
    assert me.status_code == 200 and me.json()["id"] == owner.id and "password_hash" not in me.text


async def test_lists_page_with_stable_cursors_and_refuse_unknown_filters(client: httpx.AsyncClient, new_user, new_project) -> None:
    owner = await new_user()
    project_id = await new_project(owner)
    ids = []
    for n in range(5):
        r = await client.post(f"/v1/projects/{project_id}/tasks", json={"kind": "echo" if n % 2 else "sleep", "payload": {"n": n}}, headers=owner.auth)
        ids.append(r.json()["id"])
    token = {"consistency_token": r.headers["Consistency-Token"]}
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **token, **({"cursor": cursor} if cursor else {})}
        page = await client.get(f"/v1/projects/{project_id}/tasks", params=params, headers=owner.auth)
        assert page.status_code == 200, page.text
        seen += [t["id"] for t in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == ids
    echo = await client.get(f"/v1/projects/{project_id}/tasks", params={"kind": "echo", **token}, headers=owner.auth)
    assert [t["id"] for t in echo.json()["items"]] == ids[1::2]
    for bad in ({"status": "done"}, {"kind": "Bad Kind"}, {"limit": 0}, {"limit": 201}, {"cursor": "%%%"}):
        answer = await client.get(f"/v1/projects/{project_id}/tasks", params=bad, headers=owner.auth)
        assert answer.status_code == 422, (bad, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")
    projects = await client.get("/v1/projects", params=token, headers=owner.auth)
    assert [p["id"] for p in projects.json()["items"]] == [project_id]


async def test_a_bad_token_is_422_and_an_unreachable_one_is_503(
    client: httpx.AsyncClient, new_user, new_project, gateway_settings: Settings, store  # noqa: ANN001
) -> None:
    from schemas.envelope import NO_STREAM, NewEvent

    owner = await new_user()
    project_id = await new_project(owner)
    bad = await client.get(f"/v1/projects/{project_id}", params={"consistency_token": "not-a-token"}, headers=owner.auth)
    assert bad.status_code == 422
    never = await client.get(f"/v1/projects/{project_id}", params={"consistency_token": f"project-{project_id}:99"}, headers=owner.auth)
    assert never.status_code == 422 and "do not exist" in never.text  # version 99 was never written
    # Real writes the read model cannot reach: a task stream whose first event cannot be applied
    # (a start without a submission: parked), so nothing of it shows. The token names its third.
    stuck = uuid.uuid4()
    stream = f"task-{stuck}"
    started = {"task_id": str(stuck), "worker_id": "w", "attempt": 1}
    await store.append(stream, NO_STREAM, [NewEvent("task.started", started)])
    await store.append(stream, 1, [NewEvent("task.cancelled", {"task_id": str(stuck), "reason": ""})])
    await store.append(stream, 2, [NewEvent("task.cancelled", {"task_id": str(stuck), "reason": ""})])
    impatient = replace(gateway_settings, http_port=embedded.free_port(), read_consistency_timeout=0.3)
    async with serve_gateway(impatient) as url, httpx.AsyncClient(base_url=url) as other:
        late = await other.get(f"/v1/projects/{project_id}", params={"consistency_token": f"{stream}:3"}, headers=owner.auth)
    assert late.status_code == 503
    assert late.headers["Retry-After"] == "1"
    assert late.json()["streams_behind"] == [stream]


async def test_admins_see_the_parked_events_others_may_not(client: httpx.AsyncClient, new_user, store) -> None:  # noqa: ANN001
    from schemas.envelope import NO_STREAM, NewEvent

    member, admin = await new_user(), await new_user("admin")
    task_id = uuid.uuid4()
    # An event no projection can apply (a task.started for a task never submitted).
    await store.append(f"task-{task_id}", NO_STREAM, [NewEvent("task.started", {"task_id": str(task_id), "worker_id": "w", "attempt": 1})])
    assert (await client.get("/v1/admin/projection-failures", headers=member.auth)).status_code == 403
    async with asyncio.timeout(20):
        while True:
            answer = await client.get("/v1/admin/projection-failures", headers=admin.auth)
            assert answer.status_code == 200
            parked = [f for f in answer.json()["items"] if f["stream_id"] == f"task-{task_id}"]
            if parked:
                break
            await asyncio.sleep(0.1)
    assert parked[0]["type"] == "task.started" and "OutOfOrder" in parked[0]["error"]
    assert (await client.get("/v1/admin/projection-failures", params={"include_resolved": "maybe"}, headers=admin.auth)).status_code == 422


async def test_the_openapi_document_describes_the_reads(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    paths = document["paths"]
    for path in ("/v1/users/me", "/v1/users/{user_id}", "/v1/projects", "/v1/projects/{project_id}",
                 "/v1/projects/{project_id}/tasks", "/v1/tasks/{task_id}", "/v1/admin/projection-failures"):  # fmt: skip
        assert "get" in paths[path], path
    listing = paths["/v1/projects/{project_id}/tasks"]["get"]
    names = {p["name"] for p in listing["parameters"]}
    assert {"project_id", "status", "kind", "cursor", "limit", "consistency_token"} <= names
    status = next(p for p in listing["parameters"] if p["name"] == "status")
    assert status["schema"]["enum"] == ["queued", "running", "succeeded", "failed", "cancelled"]
    by_id = paths["/v1/tasks/{task_id}"]["get"]
    assert {"200", "304", "404", "422", "503"} <= set(by_id["responses"])
    assert "Read-Model-Lag-Seconds" in by_id["responses"]["200"]["headers"]
    assert "Consistency-Token" in paths["/v1/projects"]["post"]["responses"]["201"]["headers"]
