"""Hostile input is a 422 at the edge with nothing written, never a 500 or a silent change.

Each bad body is sent with its own X-Correlation-ID; the events table is then searched for it.
The control: a valid request with the same header writes, and is found.
"""

from __future__ import annotations

import uuid

import httpx
import psycopg
import pytest

from tests.e2e.test_errors import assert_problem

DEEP = b"[" * 990 + b"]" * 990


def _task(payload: bytes) -> bytes:
    return b'{"kind":"a","payload":' + payload + b"}"


BAD_TASKS = {
    "float out of range": _task(b'{"x": 1e400}'),
    "negative float out of range": _task(b'{"x": -1e400}'),
    "integer past 4300 digits": _task(b'{"x": ' + b"9" * 4301 + b"}"),
    "nested 990 deep": _task(b'{"x": ' + DEEP + b"}"),
    "nested past the depth limit": _task(b'{"x": ' + b"[" * 40 + b"]" * 40 + b"}"),
    "lone surrogate value": _task(b'{"x": "\\ud800"}'),
    "lone low surrogate value": _task(b'{"x": ["ok", "a\\udfffb"]}'),
    "lone surrogate key": _task(b'{"\\ud800": 1}'),
    "NUL in a key": _task(b'{"a\\u0000": 1}'),
    "NaN": _task(b'{"x": NaN}'),
}


async def _written_with(database_url: str, correlation_id: str) -> int:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cur = await conn.execute("SELECT count(*) FROM events WHERE metadata->>'correlation_id' = %s", (correlation_id,))
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


@pytest.mark.parametrize("name", sorted(BAD_TASKS))
async def test_a_bad_task_body_is_422_and_writes_nothing(client: httpx.AsyncClient, new_user, new_project, database_url: str, name: str) -> None:  # noqa: ANN001
    user = await new_user()
    project = await new_project(user)
    correlation = uuid.uuid4().hex
    headers = {**user.auth, "Content-Type": "application/json", "X-Correlation-ID": correlation}
    response = await client.post(f"/v1/projects/{project}/tasks", content=BAD_TASKS[name], headers=headers)
    body = assert_problem(response, 422)
    assert body["type"].endswith("/validation-failed") and body["errors"]
    assert await _written_with(database_url, correlation) == 0
    control = await client.post(f"/v1/projects/{project}/tasks", content=_task(b'{"x": [1.5, "\\u00e9"]}'), headers=headers)
    assert control.status_code == 202, control.text
    assert await _written_with(database_url, correlation) == 1


@pytest.mark.parametrize("body", [DEEP, b'{"email": ' + DEEP + b', "password": "x"}', b'{"email": "a@b.org", "password": "\\udc00"}'])
async def test_the_unauthenticated_token_endpoint_refuses_hostile_bodies(client: httpx.AsyncClient, body: bytes) -> None:
    assert_problem(await client.post("/v1/auth/token", content=body, headers={"Content-Type": "application/json"}), 422)


@pytest.mark.parametrize(
    "field, value",
    [
        ("email", "a\x01b@example.org"),
        ("email", "ab@exa\x7fmple.org"),
        ("email", "ab\u202e@example.org"),
        ("display_name", "Bob\x1b[31m"),
        ("display_name", "Bob\u0085"),
        ("display_name", "Bob\u2028Smith"),
        ("display_name", "\u202egnp.exe"),
        ("display_name", "   "),
        ("display_name", "x" * 100 + " "),  # length is checked as sent, before stripping
    ],
)
async def test_control_characters_in_emails_and_display_names_are_refused(client: httpx.AsyncClient, field: str, value: str) -> None:
    body = {"email": f"c{uuid.uuid4().hex[:10]}@example.org", "display_name": "Carol", "password": "long enough password"}
    body[field] = value
    errors = assert_problem(await client.post("/v1/users", json=body), 422)["errors"]
    assert [e["field"] for e in errors] == [field]  # type: ignore[index]


async def test_surrounding_whitespace_is_stripped_not_refused(client: httpx.AsyncClient, new_user, store) -> None:  # noqa: ANN001
    user = await new_user()
    response = await client.patch(f"/v1/users/{user.id}", json={"display_name": "  Dana  "}, headers=user.auth)
    assert response.status_code == 200, response.text
    events = await store.read_stream(f"user-{user.id}")
    assert events[-1].data["display_name"] == "Dana"


async def test_tracing_headers_are_checked_before_they_reach_metadata(client: httpx.AsyncClient, new_user, new_project, store) -> None:  # noqa: ANN001
    user = await new_user()
    project = await new_project(user)
    url = f"/v1/projects/{project}/tasks"
    task = {"kind": "a"}
    for bad in ["a b", "x" * 129, "é", "<script>"]:
        refused = await client.post(url, json=task, headers={**user.auth, "X-Correlation-ID": bad.encode()})
        assert_problem(refused, 422)
    good_parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    ok = await client.post(url, json=task, headers={**user.auth, "X-Request-ID": "req-1.2:3", "traceparent": good_parent, "X-Correlation-ID": "order-7"})
    assert ok.status_code == 202 and ok.headers["x-request-id"] == "req-1.2:3"
    metadata = (await store.read_stream(f"task-{ok.json()['id']}"))[0].metadata
    assert metadata["traceparent"] == good_parent and metadata["correlation_id"] == "order-7" and metadata["causation_id"] == "req-1.2:3"
    bad_parents = ["00-" + "0" * 32 + "-00f067aa0ba902b7-01", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "00-xyz", good_parent + "-extra", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"]
    for bad_parent in bad_parents:
        bad_id = "id with\tspace" if bad_parent.endswith("extra") else "x" * 200
        response = await client.post(url, json=task, headers={**user.auth, "X-Request-ID": bad_id, "traceparent": bad_parent})
        assert response.status_code == 202, response.text
        new_id = response.headers["x-request-id"]
        assert new_id != bad_id and len(new_id) == 32
        metadata = (await store.read_stream(f"task-{response.json()['id']}"))[0].metadata
        assert "traceparent" not in metadata and metadata["causation_id"] == new_id
