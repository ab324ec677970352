"""The hot lane (gateway/hotreads.py) answers exactly as the route would, or leaves it to the route.

Each read is made twice against the same near-cache: through a gateway whose lanes are on and
through one whose lanes are off (the ordinary route). Status, headers (but the request id) and
body must be equal, the metrics must count the same, and a lane must really have answered (a
control: the route's handler is never called when it does). No servers: the near-cache holds
every entry, so the route never goes past it either.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from gateway.app import create_app
from gateway.auth import build_auth
from gateway.hotreads import HotRoute
from gateway.nearcache import NearCache
from gateway.ratelimit import Decision, Policy, RateLimited, RateLimits
from gateway.readmodels import ABSENT, Entry, Reads
from gateway.routes import Deps
from projections import views
from projections.cache import cache_key
from projections.lag import Lag
from taskstream.settings import Settings


class FixedLag:
    async def measure(self) -> dict[str, Lag]:
        return {"tasks": Lag("tasks", 3, 0.25, 10), "projects": Lag("projects", 1, 0.5, 10), "users": Lag("users", 0, 0.0, 10)}


class CountingLimiter:
    """Admits ``quota`` checks per key, then refuses: the limiter's contract without Redis."""

    def __init__(self, quota: int) -> None:
        self.quota, self.checks = quota, []  # type: ignore[var-annotated]

    async def check(self, policy: Policy, who: str) -> Decision:
        self.checks.append((policy.name, who))
        used = sum(1 for _, w in self.checks if w == who)
        if used > self.quota:
            raise RateLimited(7, Decision(policy, False, 0, 7))
        return Decision(policy, True, self.quota - used, 60)


class World:
    def __init__(self, *, limiter: CountingLimiter | None = None) -> None:
        self.issuer, self.verifier = build_auth(Settings(database_url="unused", jwt_secret=secrets.token_urlsafe(48)))
        self.near: NearCache[Entry] = NearCache(max_entries=100)
        self.near.healthy = True
        self.member, self.outsider, self.admin, self.gone = (str(uuid.uuid4()) for _ in range(4))
        self.project, self.task = str(uuid.uuid4()), str(uuid.uuid4())
        for user, role, active in ((self.member, "member", True), (self.outsider, "member", True),
                                   (self.admin, "admin", True), (self.gone, "member", False)):  # fmt: skip
            self.put("users", user, {"id": user, "role": role, "active": active, "version": 2})
        members = [{"user_id": self.member, "role": "owner"}, {"user_id": self.gone, "role": "member"}]  # gone: deactivated
        self.put("projects", self.project, {"id": self.project, "members": members, "version": 4, "counts_revision": 9, "name": "é"})
        self.put("tasks", self.task, {"id": self.task, "project_id": self.project, "version": 5, "payload": {"n": 1}})
        self.limiter = limiter
        limits = RateLimits(limiter, {"read": Policy("read", 100, 60)}) if limiter is not None else None  # type: ignore[arg-type]
        self.apps: dict[bool, tuple[Any, CollectorRegistry]] = {}
        self.reads: dict[bool, Reads] = {}
        for hot in (True, False):
            registry = CollectorRegistry()
            reads = Reads(None, None, self.near, FixedLag(), registry=registry)  # type: ignore[arg-type]
            deps = Deps(service=None, verifier=self.verifier, issuer=self.issuer, max_body_bytes=65536, limits=limits, reads=reads)  # type: ignore[arg-type]
            app = create_app(deps, registry=registry)
            lanes = [r for r in app.router.routes if isinstance(r, HotRoute)]
            assert {r.path for r in lanes} == {"/v1/tasks/{task_id}", "/v1/projects/{project_id}"}
            if not hot:
                for route in lanes:
                    route.lane = None
            self.apps[hot] = (app, registry)
            self.reads[hot] = reads

    async def measured(self) -> World:
        """Once the first lag measurement is in (before it, the lane leaves reads to the route)."""
        for reads in self.reads.values():
            await reads.lag(("tasks",))
        return self

    def put(self, model: str, entity_id: str, view: dict[str, Any]) -> None:
        key = cache_key(model, entity_id)
        self.near.begin_fetch(key)
        self.near.end_fetch(key, Entry(views.revision(model, view), views.dumps(view), view, views.etag(model, view)))

    def token(self, user: str, role: str = "member") -> dict[str, str]:
        assert self.issuer is not None
        return {"Authorization": f"Bearer {self.issuer.issue(user, role)}"}

    async def get(self, hot: bool, path: str, headers: dict[str, str]) -> httpx.Response:
        app, _ = self.apps[hot]
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.get(path, headers=headers)

    def sample(self, hot: bool, name: str, labels: dict[str, str]) -> float:
        return self.apps[hot][1].get_sample_value(name, labels) or 0.0


def shown(response: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    return response.status_code, [(k, v) for k, v in response.headers.multi_items() if k != "x-request-id"], response.content


async def both(world: World, path: str, headers: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> tuple[httpx.Response, httpx.Response, int]:
    """(lane answer, route answer, how many times the route's handler ran for the lane's request)."""
    await world.get(True, path, headers)  # the token's first use is verified by the route: cached after
    slow = await world.get(False, path, headers)
    from gateway import reads as reads_module

    calls = 0
    real_answer = reads_module._answer

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return real_answer(*args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(reads_module, "_answer", counting)
        fast = await world.get(True, path, headers)
    return fast, slow, calls


@pytest.mark.parametrize("reader", ["member", "admin"])
async def test_a_cached_task_and_project_are_answered_by_the_lane_as_by_the_route(reader: str, monkeypatch: pytest.MonkeyPatch) -> None:
    world = await World().measured()
    headers = world.token(getattr(world, reader), "member")  # the admin's token says member: the stored role wins
    for path in (f"/v1/tasks/{world.task}", f"/v1/projects/{world.project}"):
        fast, slow, route_calls = await both(world, path, headers, monkeypatch)
        assert route_calls == 0, "the lane did not answer"
        assert fast.status_code == 200 and shown(fast) == shown(slow)
        assert fast.headers["x-request-id"]
        etag = fast.headers["etag"]
        for if_none_match, status in ((etag, 304), (f'W/{etag}, "zzz"', 304), ("*", 304), ('"0"', 200)):
            fast, slow, route_calls = await both(world, path, {**headers, "If-None-Match": if_none_match}, monkeypatch)
            assert route_calls == 0 and fast.status_code == status and shown(fast) == shown(slow)
    # The same metrics either way: each path was read 10 times through the lane's app (4 answers
    # 200, 6 answers 304) and 5 times through the route's (2 and 3); a task read uses 3
    # near-cache entries, a project read 2.
    for hot, n in ((True, 2), (False, 1)):
        assert world.sample(hot, "taskstream_cache_requests_total", {"result": "near_hit"}) == n * 5 * (3 + 2)
        for route in ("/v1/tasks/{task_id}", "/v1/projects/{project_id}"):
            for klass, count in (("2xx", 2), ("3xx", 3)):
                labels = {"method": "GET", "route": route, "status_class": klass}
                assert world.sample(hot, "taskstream_http_requests_total", labels) == n * count


@pytest.mark.parametrize("case", ["outsider", "deactivated", "analyst", "query", "uncached task", "absent task", "absent project",
                                  "absent caller", "no token", "bad token", "head"])  # fmt: skip
async def test_what_the_lane_cannot_decide_is_answered_by_the_route(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    world = await World().measured()
    path, headers, method = f"/v1/tasks/{world.task}", world.token(world.member), "GET"
    if case == "outsider":
        headers = world.token(world.outsider)  # 404: may not see the project
    elif case == "deactivated":
        headers = world.token(world.gone)  # 403
    elif case == "analyst":
        headers = world.token(world.member, "analyst")  # 403
    elif case == "query":
        path += "?as_of=not-a-time"  # 422 from time travel
    elif case == "uncached task":
        world.near.invalidate([cache_key("tasks", world.task)])  # no Redis behind: the route reads the database

        async def no_row(*_args: Any) -> None:
            return None

        monkeypatch.setattr("gateway.readmodels.queries.get_row", no_row)
    elif case.startswith("absent"):  # remembered as not there (revision 0): no database read either
        model, entity = {"absent task": ("tasks", world.task), "absent project": ("projects", world.project),
                         "absent caller": ("users", world.member)}[case]  # fmt: skip
        world.near.invalidate([cache_key(model, entity)])
        world.near.begin_fetch(cache_key(model, entity))
        world.near.end_fetch(cache_key(model, entity), ABSENT)

        async def no_database(*_args: Any) -> None:
            raise AssertionError("read the database for a row remembered as absent")

        monkeypatch.setattr("gateway.readmodels.queries.get_row", no_database)
    elif case == "no token":
        headers = {}
    elif case == "bad token":
        headers = {"Authorization": "Bearer x.y.z"}
    answers = []
    for hot in (True, False):
        app, _ = world.apps[hot]
        route = next(r for r in app.router.routes if isinstance(r, HotRoute) and r.path == "/v1/tasks/{task_id}")
        lane, answered = route.lane, []
        if lane is not None:

            async def spy(scope: Any, send: Any, lane: Any = lane) -> bool:
                answered.append(await lane(scope, send))
                return answered[-1]

            route.lane = spy
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://test") as client:
            for _ in range(2):  # the second time, the token is in the verifier's cache
                response = await client.request("HEAD" if case == "head" else method, path, headers=headers)
        assert not any(answered)
        answers.append(shown(response))
    assert answers[0] == answers[1]
    # An absent caller is not stored yet (a new user): its token's role stands, as the route decides.
    expected = {"outsider": 404, "deactivated": 403, "analyst": 403, "query": 422, "uncached task": 404, "absent task": 404,
                "absent project": 404, "absent caller": 200, "head": 200}  # fmt: skip
    assert answers[0][0] == expected.get(case, 401)


async def test_the_lane_counts_a_read_in_the_rate_limit_once_and_refuses_as_the_route(monkeypatch: pytest.MonkeyPatch) -> None:
    limiter = CountingLimiter(quota=3)
    world = await World(limiter=limiter).measured()
    headers = world.token(world.member)
    app, _ = world.apps[True]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        first = await client.get(f"/v1/tasks/{world.task}", headers=headers)  # the route verifies the token
        second = await client.get(f"/v1/tasks/{world.task}", headers=headers)  # the lane
        outsider = world.token(world.outsider)
        await client.get(f"/v1/tasks/{world.task}", headers=outsider)  # the route (token not cached yet)
        hidden = await client.get(f"/v1/tasks/{world.task}", headers=outsider)  # the lane admits, then leaves it: 404
        third = await client.get(f"/v1/tasks/{world.task}", headers=headers)
        refused = await client.get(f"/v1/tasks/{world.task}", headers=headers)
    assert [r.status_code for r in (first, second, hidden, third, refused)] == [200, 200, 404, 200, 429]
    assert limiter.checks == [("read", f"user:{world.member}")] * 2 + [("read", f"user:{world.outsider}")] * 2 + [("read", f"user:{world.member}")] * 2
    assert second.headers["ratelimit"] == '"read";r=1;t=60' and second.headers["ratelimit-policy"] == '"read";q=100;w=60'
    assert hidden.headers["ratelimit"] == '"read";r=1;t=60'  # one decision, not two
    assert refused.headers["retry-after"] == "7" and refused.headers["content-type"] == "application/problem+json"
    assert refused.headers["ratelimit"] == '"read";r=0;t=7'
