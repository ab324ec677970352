"""An analyst's token is refused (403 problem+json) on every endpoint of the route table but the
event streams, whatever the endpoint: the test walks the application's own routes, so an
endpoint added later is covered without changing it."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import pytest
from starlette.routing import Route

from gateway.analysts import ANALYST_PATHS, analysts_may_use
from gateway.app import create_app
from gateway.auth import build_auth
from gateway.routes import Deps
from taskstream.settings import Settings

REFUSAL = "an analyst may read the event streams"


@pytest.fixture(scope="module")
def app_and_tokens() -> tuple[Any, dict[str, str]]:
    issuer, verifier = build_auth(Settings(database_url="postgresql://unused", jwt_secret="s" * 48))
    assert issuer is not None
    deps = Deps(service=object(), verifier=verifier, issuer=issuer, max_body_bytes=1024)  # type: ignore[arg-type]
    tokens = {role: issuer.issue(str(uuid.uuid4()), role) for role in ("analyst", "member", "admin")}  # type: ignore[arg-type]
    return create_app(deps), tokens


def _url(path: str) -> str:
    return re.sub(r"{(\w+)}", lambda m: {"event_type": "task.started", "schema_version": "1"}.get(m[1], str(uuid.uuid4())), path)


async def test_every_endpoint_but_the_event_streams_refuses_an_analyst(app_and_tokens: tuple[Any, dict[str, str]]) -> None:
    app, tokens = app_and_tokens
    api = [r for r in app.routes if isinstance(r, Route) and r.path.startswith("/v1/")]
    refused, let_through = [], []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://t") as client:
        for route in api:
            for method in sorted(route.methods or ()):
                answer = await client.request(method, _url(route.path), headers={"Authorization": f"Bearer {tokens['analyst']}"})
                if answer.status_code == 405:
                    continue  # a method the path lacks: no endpoint to guard
                if analysts_may_use(route.path):
                    assert answer.status_code != 403 or REFUSAL not in answer.text, (method, route.path)
                    let_through.append((method, route.path))
                    continue
                assert answer.status_code == 403, (method, route.path, answer.text)
                assert answer.headers["content-type"] == "application/problem+json"
                assert method == "HEAD" or REFUSAL in answer.json()["detail"]  # HEAD: no body
                refused.append((method, route.path))
    # Writes, reads, worker and admin endpoints are among them; the event streams are let through.
    paths = {p for _, p in refused}
    assert {"/v1/projects", "/v1/tasks/{task_id}", "/v1/admin/tasks/dead", "/v1/projects/{project_id}/history", "/v1/users/me"} <= paths
    assert {("POST", "/v1/projects"), ("DELETE", "/v1/projects/{project_id}/members/{user_id}")} <= set(refused)
    assert {("GET", "/v1/events"), ("GET", "/v1/schemas"), ("GET", "/v1/schemas/{event_type}/{schema_version}")} <= set(let_through)
    assert len(refused) >= 30


@pytest.mark.parametrize("role", ["member", "admin"])
async def test_other_roles_pass_the_guard(app_and_tokens: tuple[Any, dict[str, str]], role: str) -> None:
    """The control: the same requests with another role's token are not refused by the guard."""
    app, tokens = app_and_tokens
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://t") as client:
        answer = await client.get("/v1/schemas", headers={"Authorization": f"Bearer {tokens[role]}"})
        assert (answer.status_code == 200) == (role == "admin")  # members read no event stream (gateway.event_access)
        broken = await client.post("/v1/projects", headers={"Authorization": f"Bearer {tokens[role]}"}, content=b"{")
        assert REFUSAL not in broken.text and broken.status_code in (415, 422)


def test_the_analyst_paths_are_prefixes_of_whole_segments() -> None:
    assert ANALYST_PATHS == ("/v1/events", "/v1/schemas")
    assert analysts_may_use("/v1/events") and analysts_may_use("/v1/events/stream") and analysts_may_use("/v1/schemas/{event_type}/{schema_version}")
    assert not analysts_may_use("/v1/eventsource") and not analysts_may_use("/v1/projects") and not analysts_may_use("/v1/users/{user_id}/history")


async def test_the_contract_says_every_endpoint_may_answer_403(app_and_tokens: tuple[Any, dict[str, str]]) -> None:
    app, _ = app_and_tokens
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        document = (await client.get("/openapi.json")).json()
    operations = [(path, op) for path, item in document["paths"].items() if path.startswith("/v1/") for op in item.values()]
    assert len(operations) >= 30 and all("403" in op["responses"] for _, op in operations)
    schema_params = {p["name"]: p["schema"] for p in document["paths"]["/v1/schemas/{event_type}/{schema_version}"]["get"]["parameters"]}
    assert schema_params["schema_version"]["type"] == "integer" and "format" not in schema_params["event_type"]
    as_of = [p for p in document["paths"]["/v1/tasks/{task_id}"]["get"]["parameters"] if p["name"] == "as_of"]
    assert as_of and as_of[0]["in"] == "query"


async def test_no_operation_lists_a_parameter_twice(app_and_tokens: tuple[Any, dict[str, str]]) -> None:
    app, _ = app_and_tokens
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        document = (await client.get("/openapi.json")).json()
    for path, item in document["paths"].items():
        for op in item.values():
            names = [(p["name"], p["in"]) for p in op.get("parameters", [])]
            assert len(names) == len(set(names)), (path, names)
