"""The hot lane: reads by id answered from the near-cache in one step, without request objects.

``GET /v1/tasks/{id}`` and ``GET /v1/projects/{id}`` are the reads a client repeats. When all
that such a read needs is in this process's near-cache (``gateway.nearcache``), the lane answers
it from there: the caller's token from the verifier's cache of verified tokens, the caller's
user row, the entity (and a task's project) from the near-cache, the lag fields from the last
measurement, the body and ``ETag`` as the near-cache entry holds them (made once per entity
version). It sends the ASGI messages itself, with no Starlette ``Request``/``Response``, no
handler chain and no header re-parsing. That is what makes a near-cache hit cheaper than one
Redis GET through a plain Starlette app (``bench/read.py``).

Guarantee: the lane only ever gives an answer the ordinary route would give for the same
request at that moment, 200 or 304, with the same status, headers and body
(``tests/unit/test_hotreads.py`` compares them). It applies the route's rules in the route's
order: the bearer token, the analysts' refusal, the ``read`` rate limit, the caller's stored
role and whether they are active, the project's visibility, ``If-None-Match``. Whatever it
cannot decide alone it leaves to the route, which then answers as always (401, 403, 404, 429,
503, a consistency wait...): a token not verified before (or outside its validity window), an
analyst's token, any query string (``consistency_token``), a HEAD, an entry not in the
near-cache or a near-cache being bypassed, a deactivated caller, an entity the caller may not
see, no lag measurement yet. Metrics are kept as the route keeps them: the edge counts the
request by its route template, and each near-cache entry used counts as a ``near_hit``.

The rate limit is still Redis's (one batched round trip) when a ``read`` policy is configured:
the lane counts the request there once, and the route does not count it again if the lane then
leaves the request to it (``ratelimit.ADMITTED_KEY``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from commands.authz import Actor
from gateway.auth import AuthError, bearer_token
from gateway.readmodels import Entry, Reads
from gateway.reads import _etag_matches, _may_see
from gateway.routes import Deps

Lane = Callable[[Scope, Send], Awaitable[bool]]  # True: answered

_CACHE_CONTROL = (b"cache-control", b"private, no-cache")
_JSON = (b"content-type", b"application/json")


class HotRoute(Route):
    """A Route whose GETs try ``lane`` first, then (when it does not answer) the endpoint.
    ``lane`` None: the endpoint only (the tests compare both ways)."""

    def __init__(self, path: str, endpoint: Callable[..., Any], *, methods: list[str], lane: Lane | None) -> None:
        super().__init__(path, endpoint, methods=methods)
        self.lane = lane

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.lane is not None and scope["method"] == "GET" and await self.lane(scope, send):
            return
        await super().handle(scope, receive, send)


class HotReads:
    """The lanes of one gateway's by-id reads (see the module doc); ``lanes`` by path template.
    ``deps.reads`` is set: ``gateway.app`` makes lanes only for a gateway that serves reads."""

    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        self._reads: Reads = deps.reads
        self.lanes: dict[str, Lane] = {"/v1/tasks/{task_id}": self.task, "/v1/projects/{project_id}": self.project}

    async def task(self, scope: Scope, send: Send) -> bool:
        actor = await self._start(scope)
        if actor is None:
            return False
        task = self._reads.peek("tasks", scope["path_params"]["task_id"])
        if task is None or self._visible(actor, task.view["project_id"]) is None:
            return False
        return await _send(scope, send, self._reads, task, ("tasks", "projects"), hits=3)  # user, task, project

    async def project(self, scope: Scope, send: Send) -> bool:
        actor = await self._start(scope)
        if actor is None:
            return False
        project = self._visible(actor, scope["path_params"]["project_id"])
        if project is None:
            return False
        return await _send(scope, send, self._reads, project, ("projects", "tasks"), hits=2)  # user, project

    def _visible(self, actor: Actor, project_id: str) -> Entry | None:
        """The project's entry when the caller may see it; None when the route must decide."""
        project = self._reads.peek("projects", project_id)
        return project if project is not None and _may_see(project.view, actor) else None

    async def _start(self, scope: Scope) -> Actor | None:
        """The lanes' common first steps: the token's subject, the ``read`` limit counted, the
        caller as stored; None when the route must decide."""
        subject = self._subject(scope)
        if subject is None:
            return None
        limits = self._deps.limits
        if limits is not None:  # a no-op without a ``read`` policy
            await limits.admit_subject(scope, "read", subject)  # RateLimited: the edge answers 429
        return self._caller(subject)

    def _caller(self, subject: str) -> Actor | None:
        """The caller as stored (``gateway.reads._caller``); None when the route must decide.
        Near-cache keys are made from canonical UUIDs only, so a hit on the raw subject (or path
        parameter) means the route would have looked up that very key."""
        user = self._reads.peek("users", subject)
        if user is None or not user.view["active"]:
            return None
        return Actor(subject, user.view["role"])

    def _subject(self, scope: Scope) -> str | None:
        """The subject of the request's bearer token when the verifier has it cached and the
        lane may go on (no query string, not an analyst); None when the route must decide."""
        if self._reads.near is None or scope["query_string"]:
            return None
        authorization = _header(scope, b"authorization")
        if authorization is None:  # the common anonymous case decided without an exception
            return None
        try:
            token = bearer_token(authorization)
        except AuthError:
            return None
        principal = self._deps.verifier.cached(token)
        if principal is None or principal.role == "analyst":  # gateway.analysts refuses it
            return None
        return principal.subject


def _header(scope: Scope, name: bytes) -> str | None:
    """The first value of the header ``name`` (lower case), as Starlette decodes it."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def _send(scope: Scope, send: Send, reads: Reads, entry: Entry, lag_models: tuple[str, ...], *, hits: int) -> bool:
    lag = reads.lag_fields(lag_models)
    if lag is None:
        return False
    headers = [*lag, (b"etag", entry.etag.encode("latin-1")), _CACHE_CONTROL]
    if_none_match = _header(scope, b"if-none-match")
    reads.count_near_hits(hits)
    if if_none_match is not None and _etag_matches(if_none_match, entry.etag):
        await send({"type": "http.response.start", "status": 304, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return True
    body = entry.body
    headers.append((b"content-length", str(len(body)).encode()))
    headers.append(_JSON)
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    return True
