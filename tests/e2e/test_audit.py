"""Time travel, the audit log, histories and the analyst role, end to end over HTTP with the real
PostgreSQL (and the relay and projector behind the live reads)."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.auth import TokenIssuer
from tests.e2e.conftest import User

PROJECT_OPS = ("rename", "describe", "add_member", "change_member", "remove_member", "submit", "cancel", "archive")


@dataclass
class ProjectModel:
    """What the commands did, kept by hand (not by the projections' code)."""

    name: str
    description: str = ""
    archived: bool = False
    members: dict[str, str] = field(default_factory=dict)
    tasks: dict[str, str] = field(default_factory=dict)  # task id -> status

    def snapshot(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for status in self.tasks.values():
            counts[status] = counts.get(status, 0) + 1
        return {"name": self.name, "description": self.description, "archived": self.archived,
                "members": dict(self.members), "counts": counts, "tasks": dict(self.tasks)}  # fmt: skip


def _counts(view: dict[str, Any]) -> dict[str, int]:
    return {status: n for status, n in view["task_counts"].items() if n}


async def _ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code in (200, 201, 202), response.text
    return response.json()  # type: ignore[no-any-return]


@pytest.fixture
async def cast(new_user) -> tuple[User, User, User]:  # noqa: ANN001 - made once for all the examples
    return await new_user(), await new_user(), await new_user()


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=st.lists(st.tuples(st.sampled_from(PROJECT_OPS), st.integers(0, 3)), min_size=1, max_size=7))
async def test_time_travel_equals_the_state_folded_by_hand_at_each_position(
    client: httpx.AsyncClient, cast: tuple[User, User, User], issuer: TokenIssuer, ops  # noqa: ANN001
) -> None:
    owner, *others = cast
    admin = await _admin(issuer)
    name = f"tt-{uuid.uuid4().hex[:8]}"
    created = await _ok(await client.post("/v1/projects", json={"name": name}, headers=owner.auth))
    project_id = created["id"]
    model = ProjectModel(name=name, members={owner.id: "owner"})
    snapshots = [(created["global_position"], model.snapshot())]
    before_all = created["global_position"] - 1
    for op, n in ops:
        base = f"/v1/projects/{project_id}"
        if model.archived:
            break  # an archived project takes no more commands
        if op == "rename":
            model.name = f"tt-{uuid.uuid4().hex[:8]}"
            answer = await client.patch(base, json={"name": model.name}, headers=owner.auth)
        elif op == "describe":
            model.description = f"d{n}"
            answer = await client.patch(base, json={"description": model.description}, headers=owner.auth)
        elif op in ("add_member", "change_member"):
            who, role = others[n % 2], ("viewer", "editor")[n % 2 if op == "add_member" else (n + 1) % 2]
            model.members[who.id] = role
            answer = await client.put(f"{base}/members/{who.id}", json={"role": role}, headers=owner.auth)
        elif op == "remove_member":
            who = others[n % 2]
            if who.id not in model.members:
                continue
            del model.members[who.id]
            answer = await client.delete(f"{base}/members/{who.id}", headers=owner.auth)
        elif op == "submit":
            answer = await client.post(f"{base}/tasks", json={"kind": "echo", "payload": {"n": n}}, headers=owner.auth)
            model.tasks[(await _ok(answer))["id"]] = "queued"
        elif op == "cancel":
            queued = [t for t, s in model.tasks.items() if s == "queued"]
            if not queued:
                continue
            task_id = queued[n % len(queued)]
            model.tasks[task_id] = "cancelled"
            answer = await client.post(f"/v1/tasks/{task_id}/cancel", headers=owner.auth)
        else:
            model.archived = True
            answer = await client.post(f"{base}/archive", headers=owner.auth)
        written = await _ok(answer)
        if written["global_position"] is not None:  # None: a no-op (the same role, description...) wrote nothing
            snapshots.append((written["global_position"], model.snapshot()))
    token = {"consistency_token": answer.headers["Consistency-Token"]} if len(snapshots) > 1 else {}

    for position, expected in snapshots:
        for as_of in (str(position), await _time_of(client, admin, position)):
            view = await _ok(await client.get(f"/v1/projects/{project_id}", params={"as_of": as_of, **token}, headers=owner.auth))
            assert {"name": view["name"], "description": view["description"], "archived": view["archived"],
                    "members": {m["user_id"]: m["role"] for m in view["members"]}, "counts": _counts(view)} == \
                   {k: v for k, v in expected.items() if k != "tasks"}, as_of  # fmt: skip
        for task_id, status in expected["tasks"].items():
            task = await _ok(await client.get(f"/v1/tasks/{task_id}", params={"as_of": str(position)}, headers=owner.auth))
            assert task["status"] == status and task["id"] == task_id
    for task_id, submitted_at in _first_positions(snapshots).items():  # a task before its submission
        gone = await client.get(f"/v1/tasks/{task_id}", params={"as_of": str(submitted_at - 1)}, headers=owner.auth)
        assert gone.status_code == 404, gone.text
    assert (await client.get(f"/v1/projects/{project_id}", params={"as_of": str(before_all)}, headers=owner.auth)).status_code == 404

    # At the head, the historical answer is the live one (counts_revision counts live writes only).
    live = await _ok(await client.get(f"/v1/projects/{project_id}", params=token, headers=owner.auth))
    now = await _ok(await client.get(f"/v1/projects/{project_id}", params={"as_of": str(snapshots[-1][0])}, headers=owner.auth))
    assert {**live, "counts_revision": 0} == now


def _first_positions(snapshots: list[tuple[int, dict[str, Any]]]) -> dict[str, int]:
    first: dict[str, int] = {}
    for position, snap in snapshots:
        for task_id in snap["tasks"]:
            first.setdefault(task_id, position)
    return first


async def _time_of(client: httpx.AsyncClient, admin: dict[str, str], position: int) -> str:
    """The recorded time of the event at ``position``."""
    page = await _ok(await client.get("/v1/events", params={"after": str(position - 1), "limit": "1"}, headers=admin))
    assert page["items"][0]["global_position"] == position
    return str(page["items"][0]["recorded_at"])


async def test_as_of_before_existence_is_404_and_an_unparsable_one_is_422(client: httpx.AsyncClient, new_user, new_project) -> None:
    owner = await new_user()
    project_id = await new_project(owner)
    submitted = await _ok(await client.post(f"/v1/projects/{project_id}/tasks", json={"kind": "echo"}, headers=owner.auth))
    for path in (f"/v1/projects/{project_id}", f"/v1/tasks/{submitted['id']}", f"/v1/users/{owner.id}"):
        for bad in ("yesterday", "2026-02-30T00:00:00Z", "2026-01-01", "-1", "1.5", ""):
            answer = await client.get(path, params={"as_of": bad}, headers=owner.auth)
            assert answer.status_code == 422 and answer.headers["content-type"] == "application/problem+json", (path, bad, answer.text)
            assert answer.json()["errors"][0]["field"] == "as_of"
        for early in ("1", "2000-01-01T00:00:00Z"):
            assert (await client.get(path, params={"as_of": early}, headers=owner.auth)).status_code == 404, (path, early)
        later = await client.get(path, params={"as_of": "2999-01-01T00:00:00+02:00"}, headers=owner.auth)
        assert later.status_code == 200 and later.json()["id"] == path.rsplit("/", 1)[1]
    user = await _ok(await client.get(f"/v1/users/{owner.id}", params={"as_of": str(submitted["global_position"])}, headers=owner.auth))
    assert user["email"] == owner.email and "password_hash" not in str(user)


async def test_time_travel_visibility_is_decided_now(client: httpx.AsyncClient, new_user, new_project) -> None:
    owner, leaver, joiner, stranger = [u async for u in _users(new_user, 4)]
    admin = await new_user("admin")
    project_id = await new_project(owner)
    added = await _ok(await client.put(f"/v1/projects/{project_id}/members/{leaver.id}", json={"role": "viewer"}, headers=owner.auth))
    then = str(added["global_position"])
    await _ok(await client.delete(f"/v1/projects/{project_id}/members/{leaver.id}", headers=owner.auth))
    joined = await _ok(await client.put(f"/v1/projects/{project_id}/members/{joiner.id}", json={"role": "viewer"}, headers=owner.auth))
    path = f"/v1/projects/{project_id}"
    assert (await client.get(path, params={"as_of": then}, headers=leaver.auth)).status_code == 404  # removed since
    assert (await client.get(f"{path}/history", headers=leaver.auth)).status_code == 404
    assert (await client.get(path, params={"as_of": then}, headers=stranger.auth)).status_code == 404
    for reader in (joiner, owner, admin):  # a member added since reads the project's past
        answer = await client.get(path, params={"as_of": then}, headers=reader.auth)
        assert answer.status_code == 200 and {m["user_id"] for m in answer.json()["members"]} == {owner.id, leaver.id}
    assert (await client.get(path, params={"as_of": str(joined["global_position"])}, headers=joiner.auth)).json()["version"] == 4
    assert (await client.get(f"/v1/users/{owner.id}", params={"as_of": then}, headers=stranger.auth)).status_code == 404
    assert (await client.get(f"/v1/users/{owner.id}", params={"as_of": then}, headers=admin.auth)).status_code == 200


async def _users(new_user, n: int):  # noqa: ANN001, ANN202
    for _ in range(n):
        yield await new_user()


async def test_a_history_says_who_did_what_and_when(client: httpx.AsyncClient, new_user, new_project, issuer: TokenIssuer) -> None:
    owner, member, stranger = [u async for u in _users(new_user, 3)]
    project_id = await new_project(owner)
    await _ok(await client.put(f"/v1/projects/{project_id}/members/{member.id}", json={"role": "owner"}, headers=owner.auth))
    await _ok(await client.patch(f"/v1/projects/{project_id}", json={"description": "by the editor"}, headers=member.auth))
    task = await _ok(await client.post(f"/v1/projects/{project_id}/tasks", json={"kind": "echo"}, headers=member.auth))
    await _ok(await client.post(f"/v1/tasks/{task['id']}/cancel", json={"reason": "changed my mind"}, headers=owner.auth))

    pages, url = [], f"/v1/projects/{project_id}/history?limit=2"
    while url:
        page = await _ok(await client.get(url, headers=member.auth))
        pages.append(page["items"])
        url = page["next"]
    items = [item for page in pages for item in page]
    assert [len(p) for p in pages] == [2, 1]
    assert [(i["version"], i["type"], i["actor"]) for i in items] == [
        (1, "project.created", owner.id), (2, "project.member_added", owner.id), (3, "project.updated", member.id)]  # fmt: skip
    assert items[2]["data"]["changes"] == {"description": "by the editor"} and items[2]["schema_version"] == 2
    assert [i["global_position"] for i in items] == sorted(i["global_position"] for i in items)
    task_history = await _ok(await client.get(f"/v1/tasks/{task['id']}/history", headers=owner.auth))
    assert [(i["type"], i["actor"]) for i in task_history["items"]] == [("task.submitted", member.id), ("task.cancelled", owner.id)]
    assert task_history["items"][1]["data"]["reason"] == "changed my mind" and task_history["next_cursor"] is None
    assert (await client.get(f"/v1/tasks/{task['id']}/history", headers=stranger.auth)).status_code == 404
    mine = await _ok(await client.get(f"/v1/users/{owner.id}/history", headers=owner.auth))
    assert mine["items"][0]["type"] == "user.registered" and "password_hash" not in str(mine)
    assert (await client.get(f"/v1/users/{owner.id}/history", headers=stranger.auth)).status_code == 404
    assert (await client.get(f"/v1/users/{uuid.uuid4()}/history", headers=await _admin(issuer))).status_code == 404
    assert (await client.get(f"/v1/projects/{project_id}/history", params={"cursor": "x"}, headers=owner.auth)).status_code == 422


async def _admin(issuer: TokenIssuer) -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.issue(str(uuid.uuid4()), 'admin')}"}


async def _page_all(client: httpx.AsyncClient, headers: dict[str, str], params: dict[str, Any]) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    url: str | None = "/v1/events"
    first = True
    while url:
        page = await _ok(await client.get(url, params=params if first else None, headers=headers))
        first = False
        seen += page["items"]
        url = page["next"]
    return seen


async def test_audit_pages_cover_the_log_exactly_once_while_it_grows(
    client: httpx.AsyncClient, new_user, new_project, issuer: TokenIssuer, database_url: str
) -> None:
    admin = await _admin(issuer)
    owner = await new_user()
    project_id = await new_project(owner)
    start = (await _ok(await client.post(f"/v1/projects/{project_id}/tasks", json={"kind": "echo"}, headers=owner.auth)))["global_position"]

    async def write() -> int:
        last = 0
        for n in range(15):
            last = (await _ok(await client.post(f"/v1/projects/{project_id}/tasks", json={"kind": "echo", "payload": {"n": n}}, headers=owner.auth)))["global_position"]
        return last

    writer = asyncio.create_task(write())
    seen = await _page_all(client, admin, {"after": str(start), "limit": "3"})
    end = await writer
    seen += await _page_all(client, admin, {"after": str(seen[-1]["global_position"] if seen else start), "before": str(end + 1), "limit": "4"})
    positions = [e["global_position"] for e in seen if e["global_position"] <= end]
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT global_position FROM events WHERE global_position > %s AND global_position <= %s ORDER BY 1", [start, end])
        expected = [row[0] for row in await cur.fetchall()]
    assert positions == expected  # every event once, in order, none skipped while the log grew

    tasks_only = await _page_all(client, admin, {"after": str(start), "before": str(end + 1), "category": "task", "type": "task.submitted", "actor": owner.id, "limit": "5"})
    assert len(tasks_only) == 15 and {e["type"] for e in tasks_only} == {"task.submitted"}
    one = await _ok(await client.get("/v1/events", params={"stream": f"project-{project_id}"}, headers=admin))
    assert [e["version"] for e in one["items"]] == [1]
    first_time = tasks_only[0]["recorded_at"]
    by_time = await _page_all(client, admin, {"after": first_time, "category": "task", "actor": owner.id, "limit": "200"})
    assert [e["global_position"] for e in by_time[:14]] == [e["global_position"] for e in tasks_only[1:]]
    for bad in ({"limit": "0"}, {"after": "soon"}, {"category": "nope"}, {"type": "task.exploded"}, {"stream": "x"}, {"cursor": "-3"}):
        refused = await client.get("/v1/events", params=bad, headers=admin)
        assert refused.status_code == 422 and refused.headers["content-type"] == "application/problem+json", (bad, refused.text)


async def test_analysts_read_the_categories_they_may_and_nothing_else(
    client: httpx.AsyncClient, new_user, new_project, issuer: TokenIssuer
) -> None:
    owner = await new_user()
    project_id = await new_project(owner)
    analyst = {"Authorization": f"Bearer {issuer.issue(str(uuid.uuid4()), 'analyst')}"}
    tasks_analyst = {"Authorization": f"Bearer {issuer.issue(str(uuid.uuid4()), 'analyst', categories=['task'])}"}
    recent = await _ok(await client.get("/v1/events", params={"stream": f"project-{project_id}"}, headers=analyst))
    assert recent["items"][0]["type"] == "project.created"
    everything = await _ok(await client.get("/v1/events", params={"limit": "500"}, headers=analyst))
    assert {e["stream"].partition("-")[0] for e in everything["items"]} <= {"user", "project", "task"}
    assert (await client.get("/v1/events", params={"category": "user_email"}, headers=analyst)).status_code == 403
    narrowed = await _ok(await client.get("/v1/events", params={"limit": "500"}, headers=tasks_analyst))
    assert {e["stream"].partition("-")[0] for e in narrowed["items"]} <= {"task"}
    assert (await client.get("/v1/events", params={"stream": f"project-{project_id}"}, headers=tasks_analyst)).status_code == 403
    assert (await client.get("/v1/events", headers=owner.auth)).status_code == 403  # a member reads no event stream
    assert (await client.get("/v1/schemas", headers=owner.auth)).status_code == 403
    index = await _ok(await client.get("/v1/schemas", headers=tasks_analyst))
    assert index["items"] and {i["category"] for i in index["items"]} == {"task"}
    schema = await _ok(await client.get(index["items"][0]["url"], headers=tasks_analyst))
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert (await client.get("/v1/schemas/user.registered/1", headers=tasks_analyst)).status_code == 404
    for path in (f"/v1/projects/{project_id}", "/v1/projects", f"/v1/projects/{project_id}/history", "/v1/users/me"):
        refused = await client.get(path, headers=analyst)
        assert refused.status_code == 403 and refused.headers["content-type"] == "application/problem+json", path


async def test_no_answer_carries_a_password_hash(client: httpx.AsyncClient, new_user, issuer: TokenIssuer) -> None:
    user = await new_user()
    admin = await _admin(issuer)
    answers = [
        await client.get("/v1/events", params={"stream": f"user-{user.id}"}, headers=admin),
        await client.get("/v1/events", params={"type": "user.registered", "limit": "500"}, headers=admin),
        await client.get(f"/v1/users/{user.id}/history", headers=admin),
        await client.get(f"/v1/users/{user.id}", params={"as_of": "2999-01-01T00:00:00Z"}, headers=admin),
        await client.get("/v1/schemas/user.registered/1", headers=admin),
    ]
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert "password_hash" not in answer.text and "$argon2" not in answer.text
    assert answers[0].json()["items"][0]["data"]["email"] == user.email  # the control: the event is there


async def test_a_user_as_of_each_of_their_events(client: httpx.AsyncClient, new_user, issuer: TokenIssuer) -> None:
    user = await new_user()
    admin = await _admin(issuer)
    steps = [
        (await client.patch(f"/v1/users/{user.id}", json={"display_name": "Renamed"}, headers=user.auth), {"display_name": "Renamed"}),
        (await client.post(f"/v1/users/{user.id}/role", json={"role": "admin"}, headers=admin), {"role": "admin"}),
        (await client.post(f"/v1/users/{user.id}/deactivate", headers=admin), {"active": False}),
    ]
    history = await _ok(await client.get(f"/v1/users/{user.id}/history", headers=admin))
    registered = history["items"][0]
    expected = {"display_name": "Test User", "role": "member", "active": True, "email": user.email, "version": 1}
    first = await _ok(await client.get(f"/v1/users/{user.id}", params={"as_of": str(registered["global_position"])}, headers=admin))
    assert {k: first[k] for k in expected} == expected and first["created_at"] == registered["recorded_at"]
    for n, (answer, change) in enumerate(steps, start=2):
        expected = {**expected, **change, "version": n}
        then = await _ok(await client.get(f"/v1/users/{user.id}", params={"as_of": str((await _ok(answer))["global_position"])}, headers=admin))
        assert {k: then[k] for k in expected} == expected
        assert then["updated_at"] == history["items"][n - 1]["recorded_at"]
    assert [i["actor"] for i in history["items"]][1:] == [user.id, _subject(admin), _subject(admin)]


def _subject(headers: dict[str, str]) -> str:
    """The ``sub`` of a bearer token (its payload, unverified: the test made it)."""
    payload = headers["Authorization"].split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"])
