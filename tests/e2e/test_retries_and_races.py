"""Idempotent retries and concurrent conflicting writes, through real HTTP."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from event_store.postgres import PostgresEventStore


async def test_same_key_same_body_returns_the_original_and_appends_nothing(
    client: httpx.AsyncClient, store: PostgresEventStore, new_user, new_project  # noqa: ANN001
) -> None:
    user = await new_user()
    project = await new_project(user)
    headers = {**user.auth, "Idempotency-Key": f"submit-{uuid.uuid4()}"}
    body = {"kind": "resize-image", "payload": {"n": 1}}
    first = await client.post(f"/v1/projects/{project}/tasks", json=body, headers=headers)
    again = await client.post(f"/v1/projects/{project}/tasks", json=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["etag"] == first.headers["etag"] and again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    task_id = first.json()["id"]
    assert len(await store.read_stream(f"task-{task_id}")) == 1
    # Exactly one task.submitted carries this key: the retry created no second task.
    key = headers["Idempotency-Key"]
    project_tasks = [e for e in await store.read_all(first.json()["global_position"] - 1, 1000) if e.metadata.get("idempotency_key") == key]
    assert len(project_tasks) == 1


async def test_same_key_other_body_is_refused_with_422(client: httpx.AsyncClient, new_user, new_project) -> None:  # noqa: ANN001
    user = await new_user()
    project = await new_project(user)
    headers = {**user.auth, "Idempotency-Key": f"k-{uuid.uuid4()}"}
    assert (await client.post(f"/v1/projects/{project}/tasks", json={"kind": "a"}, headers=headers)).status_code == 202
    response = await client.post(f"/v1/projects/{project}/tasks", json={"kind": "b"}, headers=headers)
    assert response.status_code == 422 and response.headers["content-type"] == "application/problem+json"


async def test_a_retried_registration_answers_like_the_first(client: httpx.AsyncClient) -> None:
    body = {"email": f"retry-{uuid.uuid4().hex[:8]}@example.org", "display_name": "R", "password": "password-1"}
    headers = {"Idempotency-Key": f"reg-{uuid.uuid4()}"}
    first = await client.post("/v1/users", json=body, headers=headers)
    again = await client.post("/v1/users", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()


async def test_concurrent_retries_with_one_key_write_once(client: httpx.AsyncClient, store: PostgresEventStore, new_user, new_project) -> None:  # noqa: ANN001
    user = await new_user()
    project = await new_project(user)
    headers = {**user.auth, "Idempotency-Key": f"burst-{uuid.uuid4()}"}
    responses = await asyncio.gather(
        *(client.post(f"/v1/projects/{project}/tasks", json={"kind": "burst"}, headers=headers) for _ in range(8))
    )
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["id"] for r in responses}) == 1


async def test_concurrent_conflicting_writes_exactly_one_wins(client: httpx.AsyncClient, new_user, new_project) -> None:  # noqa: ANN001
    user = await new_user()
    project = await new_project(user)
    responses = await asyncio.gather(
        *(
            client.patch(f"/v1/projects/{project}", json={"description": f"writer {i}"}, headers={**user.auth, "If-Match": '"1"'})
            for i in range(10)
        )
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [409] * 9
    for conflict in (r for r in responses if r.status_code == 409):
        assert conflict.json()["expected_version"] == 1 and conflict.json()["actual_version"] == 2


async def test_unpinned_concurrent_writes_all_land_by_retrying(client: httpx.AsyncClient, store: PostgresEventStore, new_user, new_project) -> None:  # noqa: ANN001
    """Without If-Match a conflict with another writer is retried: every write lands once."""
    user = await new_user()
    project = await new_project(user)
    members = [await new_user() for _ in range(4)]
    responses = await asyncio.gather(
        *(client.put(f"/v1/projects/{project}/members/{m.id}", json={"role": "viewer"}, headers=user.auth) for m in members)
    )
    assert [r.status_code for r in responses] == [200] * 4
    events = await store.read_stream(f"project-{project}")
    assert sorted(e.data["user_id"] for e in events if e.type == "project.member_added") == sorted(m.id for m in members)
