"""``gateway.edge.IndexedRouter`` asks only routes that could match, and so picks what Starlette's router picks."""

from __future__ import annotations

import secrets

from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.responses import Response
from starlette.routing import Match, Route

from gateway.app import create_app
from gateway.auth import build_auth
from gateway.edge import IndexedRouter
from gateway.routes import Deps
from taskstream.settings import Settings


async def _ok(_request: object) -> Response:
    return Response()


def _router() -> IndexedRouter:
    _, verifier = build_auth(Settings(database_url="unused", jwt_secret=secrets.token_urlsafe(48)))
    app = create_app(Deps(service=None, verifier=verifier, issuer=None, max_body_bytes=1024, reads=object()))  # type: ignore[arg-type]
    extra = [Route("/v1/files/{rest:path}", _ok), Route("/v1/tasks/{n:int}/x", _ok), Route("/v1/{any}", _ok), Route("/", _ok)]
    return IndexedRouter([*app.router.routes, *extra])


ROUTER = _router()
SEGMENTS = st.sampled_from(["v1", "tasks", "projects", "users", "me", "files", "events", "stream", "cancel", "result", "12",
                            "9f6c1a5e-8f0e-4b55-9d3c-3f1f0b1c2d3e", "", "x", "a b", "metrics", "openapi.json"])  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(SEGMENTS, min_size=0, max_size=6), st.sampled_from(["GET", "POST", "DELETE"]))
def test_the_routes_asked_include_every_route_that_matches_in_table_order(segments: list[str], method: str) -> None:
    path = "/" + "/".join(segments)
    scope = {"type": "http", "path": path, "method": method, "root_path": ""}
    matching = [r for r in ROUTER.routes if r.matches(scope)[0] is not Match.NONE]
    asked = ROUTER._for(path)
    assert [r for r in asked if r.matches(scope)[0] is not Match.NONE] == matching
    assert asked == [r for r in ROUTER.routes if r in asked]  # tried in table order


def test_a_read_by_id_asks_only_the_templates_of_its_length() -> None:
    asked = ROUTER._for("/v1/tasks/9f6c1a5e-8f0e-4b55-9d3c-3f1f0b1c2d3e")
    assert "/v1/tasks/{task_id}" in [r.path for r in asked]  # type: ignore[attr-defined]
    assert all(r.path.count("/") == 3 or "{rest:path}" in r.path for r in asked)  # type: ignore[attr-defined]
