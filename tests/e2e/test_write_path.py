"""The whole write path through HTTP: register, log in, create, share, submit, cancel."""

from __future__ import annotations

import uuid

import httpx

from event_store.postgres import PostgresEventStore


async def test_register_login_create_share_submit_cancel(client: httpx.AsyncClient, store: PostgresEventStore, new_user) -> None:  # noqa: ANN001
    email = f"alice-{uuid.uuid4().hex[:8]}@Example.org"
    response = await client.post("/v1/users", json={"email": email, "display_name": "Alice", "password": "correct horse battery"})
    assert response.status_code == 201, response.text
    body = response.json()
    alice_id = body["id"]
    assert body["stream"] == f"user-{alice_id}" and body["version"] == 1 and body["global_position"] > 0
    assert response.headers["etag"] == '"1"' and response.headers["location"] == f"/v1/users/{alice_id}"
    assert response.headers["x-request-id"]

    response = await client.post("/v1/auth/token", json={"email": email, "password": "correct horse battery"})
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "Bearer" and response.headers["cache-control"] == "no-store"
    alice = {"Authorization": f"Bearer {response.json()['access_token']}"}

    response = await client.post("/v1/projects", json={"name": "Launch", "description": "the big one"}, headers=alice)
    assert response.status_code == 201, response.text
    project_id = response.json()["id"]
    assert response.headers["location"] == f"/v1/projects/{project_id}"

    bob = await new_user()
    response = await client.put(f"/v1/projects/{project_id}/members/{bob.id}", json={"role": "editor"}, headers=alice)
    assert response.status_code == 200 and response.json()["version"] == 2

    response = await client.post(
        f"/v1/projects/{project_id}/tasks",
        json={"kind": "resize-image", "payload": {"url": "s3://b/k.png", "width": 640}, "priority": 7},
        headers=bob.auth,
    )
    assert response.status_code == 202, response.text
    task_id = response.json()["id"]
    assert response.headers["location"] == f"/v1/tasks/{task_id}" and response.headers["etag"] == '"1"'

    response = await client.post(f"/v1/tasks/{task_id}/cancel", json={"reason": "changed my mind"}, headers=bob.auth)
    assert response.status_code == 202 and response.json()["version"] == 2

    events = await store.read_stream(f"task-{task_id}")
    assert [e.type for e in events] == ["task.submitted", "task.cancelled"]
    assert events[0].data["payload"] == {"url": "s3://b/k.png", "width": 640} and events[0].data["priority"] == 7
    assert events[0].metadata["actor"] == bob.id and events[0].metadata["correlation_id"]
    user_events = await store.read_stream(f"user-{alice_id}")
    assert user_events[0].data["email"] == email.lower()
    assert "correct horse" not in str(user_events[0].data) and user_events[0].data["password_hash"].startswith("$argon2id$")


async def test_profile_role_and_deactivation(client: httpx.AsyncClient, new_user) -> None:  # noqa: ANN001
    admin, carol = await new_user("admin"), await new_user()
    response = await client.patch(f"/v1/users/{carol.id}", json={"display_name": "Carol C."}, headers=carol.auth)
    assert response.status_code == 200 and response.json()["version"] == 2
    response = await client.post(f"/v1/users/{carol.id}/role", json={"role": "analyst"}, headers=admin.auth)
    assert response.status_code == 200 and response.json()["version"] == 3
    response = await client.post(f"/v1/users/{carol.id}/deactivate", json={"reason": "left"}, headers=admin.auth)
    assert response.status_code == 200
    # A deactivated user can no longer log in, and her tokens no longer write.
    response = await client.post("/v1/auth/token", json={"email": carol.email, "password": carol.password})
    assert response.status_code == 401
    response = await client.patch(f"/v1/users/{carol.id}", json={"display_name": "Back"}, headers=carol.auth)
    assert response.status_code == 403


async def test_rename_archive_and_name_uniqueness(client: httpx.AsyncClient, new_user, new_project) -> None:  # noqa: ANN001
    owner = await new_user()
    first = await new_project(owner, "Alpha")
    response = await client.post("/v1/projects", json={"name": "  alpha "}, headers=owner.auth)
    assert response.status_code == 409 and response.json()["type"].endswith("project-name-taken")
    other_owner = await new_user()
    assert (await client.post("/v1/projects", json={"name": "Alpha"}, headers=other_owner.auth)).status_code == 201

    response = await client.patch(f"/v1/projects/{first}", json={"name": "Beta"}, headers=owner.auth)
    assert response.status_code == 200
    assert (await client.post("/v1/projects", json={"name": "Alpha"}, headers=owner.auth)).status_code == 201  # freed
    response = await client.post(f"/v1/projects/{first}/archive", headers=owner.auth)
    assert response.status_code == 200
    assert (await client.post("/v1/projects", json={"name": "Beta"}, headers=owner.auth)).status_code == 201  # freed
    response = await client.post(f"/v1/projects/{first}/tasks", json={"kind": "x"}, headers=owner.auth)
    assert response.status_code == 409


async def test_members_and_project_roles(client: httpx.AsyncClient, new_user, new_project) -> None:  # noqa: ANN001
    owner, viewer, stranger = await new_user(), await new_user(), await new_user()
    project = await new_project(owner)
    assert (await client.put(f"/v1/projects/{project}/members/{viewer.id}", json={"role": "viewer"}, headers=owner.auth)).status_code == 200

    # The viewer sees the project but may not change it: 403. A stranger may not see it: 404.
    response = await client.post(f"/v1/projects/{project}/tasks", json={"kind": "x"}, headers=viewer.auth)
    assert response.status_code == 403 and response.headers["content-type"] == "application/problem+json"
    response = await client.post(f"/v1/projects/{project}/tasks", json={"kind": "x"}, headers=stranger.auth)
    assert response.status_code == 404
    response = await client.put(f"/v1/projects/{project}/members/{stranger.id}", json={"role": "owner"}, headers=viewer.auth)
    assert response.status_code == 403
    # Only owners manage members; the last owner stays.
    response = await client.delete(f"/v1/projects/{project}/members/{owner.id}", headers=owner.auth)
    assert response.status_code == 409
    response = await client.delete(f"/v1/projects/{project}/members/{viewer.id}", headers=owner.auth)
    assert response.status_code == 200
    response = await client.post(f"/v1/projects/{project}/tasks", json={"kind": "x"}, headers=viewer.auth)
    assert response.status_code == 404
    # Members may not change roles of users; admins may.
    response = await client.post(f"/v1/users/{viewer.id}/role", json={"role": "admin"}, headers=owner.auth)
    assert response.status_code == 403
    # An analyst reads streams but creates no projects.
    analyst = await new_user("analyst")
    assert (await client.post("/v1/projects", json={"name": "n"}, headers=analyst.auth)).status_code == 403


async def test_role_changes_and_deactivation_bind_existing_tokens(client: httpx.AsyncClient, new_user) -> None:  # noqa: ANN001
    """The token says admin, the store says otherwise: the store wins on the next write."""
    admin, other = await new_user("admin"), await new_user()
    root = await new_user("admin")
    assert (await client.post(f"/v1/users/{admin.id}/role", json={"role": "member"}, headers=root.auth)).status_code == 200
    response = await client.post(f"/v1/users/{other.id}/role", json={"role": "admin"}, headers=admin.auth)  # stale admin token
    assert response.status_code == 403
    assert (await client.post(f"/v1/users/{root.id}/deactivate", headers=root.auth)).status_code == 200
    body = {"email": f"x{uuid.uuid4().hex[:8]}@example.org", "display_name": "X", "password": "password-1", "role": "admin"}
    assert (await client.post("/v1/users", json=body, headers=root.auth)).status_code == 403


async def test_adding_a_member_to_an_invisible_project_reveals_nothing_about_users(client: httpx.AsyncClient, new_user, new_project) -> None:  # noqa: ANN001
    owner, stranger, someone = await new_user(), await new_user(), await new_user()
    project = await new_project(owner)
    for target in (someone.id, str(uuid.uuid4())):  # an existing user and an unknown one: the same answer
        response = await client.put(f"/v1/projects/{project}/members/{target}", json={"role": "viewer"}, headers=stranger.auth)
        assert response.status_code == 404
    response = await client.put(f"/v1/projects/{project}/members/{uuid.uuid4()}", json={"role": "viewer"}, headers=owner.auth)
    assert response.status_code == 404 and response.json()["detail"] == "no active user with this id"


async def test_a_taken_name_does_not_reveal_the_project_holding_it(client: httpx.AsyncClient, new_user, new_project) -> None:  # noqa: ANN001
    owner = await new_user()
    held = await new_project(owner, "Secret Plan")
    response = await client.post("/v1/projects", json={"name": "secret plan"}, headers=owner.auth)
    assert response.status_code == 409 and held not in response.text


async def test_a_no_op_write_keeps_its_idempotency_key(client: httpx.AsyncClient, new_user, new_project) -> None:  # noqa: ANN001
    owner, member = await new_user(), await new_user()
    project = await new_project(owner)
    url = f"/v1/projects/{project}/members/{member.id}"
    assert (await client.put(url, json={"role": "viewer"}, headers=owner.auth)).status_code == 200
    key = {"Idempotency-Key": f"noop-{uuid.uuid4()}"}
    first = await client.put(url, json={"role": "viewer"}, headers={**owner.auth, **key})  # changes nothing
    assert first.status_code == 200 and first.json()["global_position"] is None
    again = await client.put(url, json={"role": "viewer"}, headers={**owner.auth, **key})
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert (await client.put(url, json={"role": "editor"}, headers={**owner.auth, **key})).status_code == 422
