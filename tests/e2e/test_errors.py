"""Every error is RFC 9457 problem+json: 401, 403, 404, 409, 413, 415, 422 through real HTTP."""

from __future__ import annotations

import asyncio
import uuid

import httpx

PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status and body["type"] and body["title"] and "detail" in body
    assert "Traceback" not in response.text and "psycopg" not in response.text and "SELECT" not in response.text
    return body


async def test_422_lists_each_failing_field_and_refuses_unknown_fields(client: httpx.AsyncClient, new_user) -> None:  # noqa: ANN001
    user = await new_user()
    response = await client.post(
        "/v1/projects/" + str(uuid.uuid4()) + "/tasks",
        json={"kind": "Not A Kind!", "priority": 42, "max_attempts": 0, "colour": "blue"},
        headers=user.auth,
    )
    body = assert_problem(response, 422)
    fields = {e["field"]: e for e in body["errors"]}  # type: ignore[union-attr]
    assert set(fields) == {"kind", "priority", "max_attempts", "colour"}
    assert fields["colour"]["type"] == "extra_forbidden"
    response = await client.post("/v1/users", json={"email": "not-an-email", "display_name": "", "password": "short"})
    assert {e["field"] for e in assert_problem(response, 422)["errors"]} == {"email", "display_name", "password"}  # type: ignore[union-attr]


async def test_422_for_malformed_json_and_non_objects(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/users", content=b"{nope", headers={"Content-Type": "application/json"})
    assert_problem(response, 422)
    response = await client.post("/v1/users", json=[1, 2])
    assert_problem(response, 422)


async def test_415_for_a_wrong_content_type(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/users", content=b"email=a@b.c", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_problem(response, 415)


async def test_413_for_a_body_over_the_limit(client: httpx.AsyncClient, new_user, new_project) -> None:  # noqa: ANN001
    user = await new_user()
    project = await new_project(user)
    big = {"kind": "x", "payload": {"blob": "x" * 70_000}}
    response = await client.post(f"/v1/projects/{project}/tasks", json=big, headers=user.auth)
    assert_problem(response, 413)

    async def chunks():  # noqa: ANN202 - no Content-Length: the limit holds while streaming too
        for _ in range(20):
            yield b" " * 4096

    response = await client.post(f"/v1/projects/{project}/tasks", content=chunks(), headers={**user.auth, "Content-Type": "application/json"})
    assert_problem(response, 413)


async def test_401_carries_www_authenticate(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/projects", json={"name": "n"})
    assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")
    response = await client.post("/v1/projects", json={"name": "n"}, headers={"Authorization": "Bearer not.a.token"})
    assert_problem(response, 401)
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_404_for_unknown_and_malformed_ids(client: httpx.AsyncClient, new_user) -> None:  # noqa: ANN001
    user = await new_user()
    assert_problem(await client.post(f"/v1/tasks/{uuid.uuid4()}/cancel", headers=user.auth), 404)
    assert_problem(await client.post("/v1/tasks/not-a-uuid/cancel", headers=user.auth), 404)
    assert_problem(await client.patch(f"/v1/projects/{uuid.uuid4()}", json={"name": "x"}, headers=user.auth), 404)
    assert_problem(await client.get("/v1/nothing-here"), 404)


async def test_409_with_if_match_names_both_versions(client: httpx.AsyncClient, new_user, new_project) -> None:  # noqa: ANN001
    user = await new_user()
    project = await new_project(user)
    ok = await client.patch(f"/v1/projects/{project}", json={"description": "v2"}, headers={**user.auth, "If-Match": '"1"'})
    assert ok.status_code == 200 and ok.headers["etag"] == '"2"'
    stale = await client.patch(f"/v1/projects/{project}", json={"description": "v3"}, headers={**user.auth, "If-Match": '"1"'})
    body = assert_problem(stale, 409)
    assert body["expected_version"] == 1 and body["actual_version"] == 2
    assert_problem(await client.patch(f"/v1/projects/{project}", json={"description": "x"}, headers={**user.auth, "If-Match": "yesterday"}), 422)


async def test_409_for_an_illegal_transition(client: httpx.AsyncClient, new_user, new_project) -> None:  # noqa: ANN001
    user = await new_user()
    project = await new_project(user)
    task = (await client.post(f"/v1/projects/{project}/tasks", json={"kind": "x"}, headers=user.auth)).json()["id"]
    assert (await client.post(f"/v1/tasks/{task}/cancel", headers=user.auth)).status_code == 202
    body = assert_problem(await client.post(f"/v1/tasks/{task}/cancel", headers=user.auth), 409)
    assert str(body["type"]).endswith("illegal-transition")


async def test_register_twice_with_one_email_is_a_conflict(client: httpx.AsyncClient) -> None:
    email = f"twice-{uuid.uuid4().hex[:8]}@example.org"
    first = client.post("/v1/users", json={"email": email, "display_name": "A", "password": "password-1"})
    second = client.post("/v1/users", json={"email": email.upper(), "display_name": "B", "password": "password-2"})
    statuses = sorted(r.status_code for r in await asyncio.gather(first, second))
    assert statuses == [201, 409]


async def test_login_with_a_wrong_password_or_unknown_email(client: httpx.AsyncClient, new_user) -> None:  # noqa: ANN001
    user = await new_user()
    assert_problem(await client.post("/v1/auth/token", json={"email": user.email, "password": "wrong-password"}), 401)
    assert_problem(await client.post("/v1/auth/token", json={"email": "nobody@example.org", "password": "whatever1"}), 401)


async def test_only_admins_register_other_roles(client: httpx.AsyncClient, new_user) -> None:  # noqa: ANN001
    member = await new_user()
    body = {"email": f"x{uuid.uuid4().hex[:8]}@example.org", "display_name": "X", "password": "password-1", "role": "admin"}
    assert_problem(await client.post("/v1/users", json=body), 403)
    assert_problem(await client.post("/v1/users", json=body, headers=member.auth), 403)


async def test_nul_characters_and_nan_are_refused_with_422(client: httpx.AsyncClient, new_user, new_project) -> None:  # noqa: ANN001
    user = await new_user()
    project = await new_project(user)
    body = assert_problem(await client.post(f"/v1/projects/{project}/tasks", json={"kind": "x", "payload": {"a": ["ok", "bad\x00"]}}, headers=user.auth), 422)
    assert body["errors"] == [{"field": "payload.a.1", "message": "NUL characters are not accepted"}]
    raw = b'{"kind": "x", "payload": {"n": NaN}}'
    assert_problem(await client.post(f"/v1/projects/{project}/tasks", content=raw, headers={**user.auth, "Content-Type": "application/json"}), 422)
    assert_problem(await client.post("/v1/users", json={"email": "a\x00@example.org", "display_name": "N", "password": "password-1"}), 422)


async def test_405_lists_every_method_of_the_path(client: httpx.AsyncClient) -> None:
    response = await client.patch(f"/v1/projects/{uuid.uuid4()}/members/{uuid.uuid4()}", json={})
    assert_problem(response, 405)
    assert sorted(m.strip() for m in response.headers["allow"].split(",")) == ["DELETE", "PUT"]
