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
from gateway.readmodels import Entry, Reads
from gateway.reads import _etag_matches, _may_see
from gateway.routes import Deps
from projections import views
from projections.cache import PREFIX

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
    """The lanes of one gateway's by-id reads (see the module doc); ``lanes`` by path template."""

    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        self._reads: Reads | None = deps.reads
        self._limited = deps.limits is not None and "read" in deps.limits.policies
        self.lanes: dict[str, Lane] = {"/v1/tasks/{task_id}": self.task, "/v1/projects/{project_id}": self.project}

    async def task(self, scope: Scope, send: Send) -> bool:
        caller = await self._start(scope)
        if caller is None:
            return False
        reads, near = caller[1], caller[1].near
        task = near.get(f"{PREFIX}tasks:{scope['path_params']['task_id']}")
        if task is None or not task.revision:  # revision 0: no such row, the route answers
            return False
        project = near.get(f"{PREFIX}projects:{task.view['project_id']}")
        if project is None or not project.revision or not _may_see(project.view, caller[0]):
            return False
        return await _send(scope, send, reads, "tasks", task, ("tasks", "projects"), hits=3)

    async def project(self, scope: Scope, send: Send) -> bool:
        caller = await self._start(scope)
        if caller is None:
            return False
        reads, near = caller[1], caller[1].near
        project = near.get(f"{PREFIX}projects:{scope['path_params']['project_id']}")
        if project is None or not project.revision or not _may_see(project.view, caller[0]):
            return False
        return await _send(scope, send, reads, "projects", project, ("projects", "tasks"), hits=2)

    async def _start(self, scope: Scope) -> tuple[Actor, Reads] | None:
        """The lanes' common first steps: the token's subject, the ``read`` limit counted, the
        caller as stored; None when the route must decide."""
        subject = self._subject(scope)
        if subject is None:
            return None
        if self._limited:
            await self._admit(scope, subject)
        return self._caller(subject)

    async def _admit(self, scope: Scope, subject: str) -> None:
        assert self._deps.limits is not None
        await self._deps.limits.admit_subject(scope, "read", subject)  # RateLimited: the edge answers 429

    def _caller(self, subject: str) -> tuple[Actor, Reads] | None:
        """The caller as stored (``gateway.reads._caller``); None when the route must decide.
        Near-cache keys are made from canonical UUIDs only, so a hit on the raw subject (or path
        parameter) means the route would have looked up that very key."""
        reads = self._reads
        assert reads is not None and reads.near is not None
        user = reads.near.get(f"{PREFIX}users:{subject}")
        if user is None or not user.revision or not user.view["active"]:
            return None
        return Actor(subject, user.view["role"]), reads

    def _subject(self, scope: Scope) -> str | None:
        """The subject of the request's bearer token when the verifier has it cached and the
        lane may go on (no query string, not an analyst); None when the route must decide."""
        reads = self._reads
        if reads is None or reads.near is None or scope["query_string"]:
            return None
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        if authorization is None:
            return None
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or " " in token:
            return None
        principal = self._deps.verifier.cached(token)
        if principal is None or principal.role == "analyst":  # gateway.analysts refuses it
            return None
        return principal.subject


async def _send(scope: Scope, send: Send, reads: Reads, model: str, entry: Entry, lag_models: tuple[str, ...], *, hits: int) -> bool:
    lag = reads.lag_fields(lag_models)
    if lag is None:
        return False
    etag = entry.etag or views.etag(model, entry.view)
    headers = [*lag, (b"etag", etag.encode("latin-1")), _CACHE_CONTROL]
    if_none_match = None
    for name, value in scope["headers"]:
        if name == b"if-none-match":
            if_none_match = value.decode("latin-1")
            break
    reads.count_near_hits(hits)
    if if_none_match is not None and _etag_matches(if_none_match, etag):
        await send({"type": "http.response.start", "status": 304, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return True
    body = entry.body
    headers.append((b"content-length", str(len(body)).encode()))
    headers.append(_JSON)
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    return True
