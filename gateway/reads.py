"""The query API: reads by id and lists, with the same visibility as the writes.

A project (or a task of a project) the caller may not see is a 404, like a missing one; a user
other than oneself is a 404 unless the caller is an admin. The caller's role and whether they are
active are read from the users read model (through the cache), so a role change or a
deactivation binds existing tokens here too; a token whose subject has no user row (an operator's
bootstrap admin, or a user not projected yet) keeps the token's role.

Every answer by id carries ``ETag`` (``If-None-Match`` gives 304) and, unless a consistency token
was presented, ``Read-Model-Lag-Events`` / ``Read-Model-Lag-Seconds``: how far behind the events
table the read models involved may be.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from commands import authz
from commands.authz import Actor
from commands.errors import Forbidden, NotFound, ValidationFailed
from gateway import consistency
from gateway.http import path_uuid
from gateway.readmodels import Entry, Reads
from gateway.routes import Deps, Endpoint, _actor
from gateway.views import FailureList, ProjectList, ProjectView, TaskList, TaskView, UserView
from projections import queries
from projections.runtime import list_failures
from schemas.tasks import TASK_STATUSES

MAX_LIMIT = 200
DEFAULT_LIMIT = 50
_KIND = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")


def _reads(deps: Deps) -> Reads:
    if deps.reads is None:
        raise NotFound("this gateway serves no reads")
    return deps.reads  # type: ignore[no-any-return]


def _token(request: Request) -> dict[str, int] | None:
    raw = request.query_params.get(consistency.QUERY)
    return consistency.decode(raw) if raw is not None else None


async def _caller(actor: Actor, reads: Reads, *, fresh: bool) -> Actor:
    try:
        user_id = uuid.UUID(actor.user_id)
    except ValueError:
        return actor
    entry = await reads.get("users", user_id, fresh=fresh)
    if entry is None:
        return actor
    if not entry.view["active"]:
        raise Forbidden("this user is deactivated")
    return actor if entry.view["role"] == actor.role else Actor(actor.user_id, entry.view["role"])


def _may_see(project: dict[str, Any], caller: Actor) -> bool:
    return caller.is_admin or any(m["user_id"] == caller.user_id for m in project["members"])


async def _prepare(request: Request, deps: Deps, actor: Actor) -> tuple[Reads, Actor, bool]:
    """The reads, the caller as stored, and whether a consistency token was presented (and
    waited for). Handlers authenticate first (``_actor``: 401 before anything about the
    parameters is said), check their parameters (422/404 without any wait), then call this."""
    reads = _reads(deps)
    required = _token(request)
    if required:
        await reads.wait_for(required)
    caller = await _caller(actor, reads, fresh=required is not None)
    return reads, caller, required is not None


async def _lag_headers(reads: Reads, models: tuple[str, ...], fresh: bool) -> dict[str, str]:
    if fresh:
        return {}
    lag = await reads.lag(models)
    if lag is None:
        return {}
    return {"Read-Model-Lag-Events": str(lag[0]), "Read-Model-Lag-Seconds": f"{lag[1]:.3f}"}


def _etag_matches(header: str, etag: str) -> bool:
    if header.strip() == "*":
        return True
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return etag in tags


def _answer(request: Request, entry: Entry, headers: dict[str, str]) -> Response:
    headers = {**headers, "ETag": entry.etag, "Cache-Control": "private, no-cache"}
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None and _etag_matches(if_none_match, entry.etag):
        return Response(status_code=304, headers=headers)
    return Response(entry.body, media_type="application/json", headers=headers)


async def get_me(request: Request, deps: Deps) -> Response:
    actor = await _actor(request, deps)
    reads, caller, fresh = await _prepare(request, deps, actor)
    entry = await reads.get("users", caller.user_id, fresh=fresh) if _is_uuid(caller.user_id) else None
    if entry is None:
        raise NotFound("no user read model for this token's subject yet")
    return _answer(request, entry, await _lag_headers(reads, ("users",), fresh))


async def get_user(request: Request, deps: Deps) -> Response:
    actor = await _actor(request, deps)
    user_id = path_uuid(request, "user_id")
    reads, caller, fresh = await _prepare(request, deps, actor)
    authz.self_or_admin(caller, user_id)
    entry = await reads.get("users", user_id, fresh=fresh)
    if entry is None:
        raise NotFound("no such user")
    return _answer(request, entry, await _lag_headers(reads, ("users",), fresh))


async def get_project(request: Request, deps: Deps) -> Response:
    actor = await _actor(request, deps)
    project_id = path_uuid(request, "project_id")
    reads, caller, fresh = await _prepare(request, deps, actor)
    entry = await reads.get("projects", project_id, fresh=fresh)
    if entry is None or not _may_see(entry.view, caller):
        raise NotFound("no such project")
    return _answer(request, entry, await _lag_headers(reads, ("projects", "tasks"), fresh))


async def get_task(request: Request, deps: Deps) -> Response:
    actor = await _actor(request, deps)
    task_id = path_uuid(request, "task_id")
    reads, caller, fresh = await _prepare(request, deps, actor)
    entry = await reads.get("tasks", task_id, fresh=fresh)
    if entry is None:
        raise NotFound("no such task")
    project = await reads.get("projects", entry.view["project_id"], fresh=fresh)
    if project is None or not _may_see(project.view, caller):
        raise NotFound("no such task")
    return _answer(request, entry, await _lag_headers(reads, ("tasks", "projects"), fresh))


async def list_projects(request: Request, deps: Deps) -> Response:
    actor = await _actor(request, deps)
    after, limit = _page(request)
    reads, caller, fresh = await _prepare(request, deps, actor)
    items = await queries.list_projects(reads.pool, member=None if caller.is_admin else caller.user_id, after=after, limit=limit + 1)
    return _list(items, limit, await _lag_headers(reads, ("projects", "tasks"), fresh))


async def list_tasks(request: Request, deps: Deps) -> Response:
    actor = await _actor(request, deps)
    project_id = path_uuid(request, "project_id")
    after, limit = _page(request)
    status = request.query_params.get("status")
    kind = request.query_params.get("kind")
    errors = []
    if status is not None and status not in TASK_STATUSES:
        errors.append({"field": "status", "message": f"must be one of {', '.join(TASK_STATUSES)}"})
    if kind is not None and not _KIND.match(kind):
        errors.append({"field": "kind", "message": "not a task kind"})
    if errors:
        raise ValidationFailed("unknown filter value", errors=errors)
    reads, caller, fresh = await _prepare(request, deps, actor)
    project = await reads.get("projects", project_id, fresh=fresh)
    if project is None or not _may_see(project.view, caller):
        raise NotFound("no such project")
    items = await queries.list_tasks(reads.pool, project_id, status=status, kind=kind, after=after, limit=limit + 1)
    return _list(items, limit, await _lag_headers(reads, ("tasks", "projects"), fresh))


async def projection_failures(request: Request, deps: Deps) -> Response:
    """Events the projections parked (admins): what is not in the read models, and why."""
    actor = await _actor(request, deps)
    reads, caller, _ = await _prepare(request, deps, actor)
    authz.admin_only(caller)
    include_resolved = request.query_params.get("include_resolved", "false")
    if include_resolved not in ("true", "false"):
        raise ValidationFailed("include_resolved is true or false", errors=[{"field": "include_resolved", "message": "true or false"}])
    _, limit = _page(request)
    failures = await list_failures(reads.pool, include_resolved=include_resolved == "true", limit=limit)
    return JSONResponse({"items": failures}, headers={"Cache-Control": "no-store"})


def _list(items: list[tuple[int, dict[str, Any]]], limit: int, headers: dict[str, str]) -> Response:
    page = items[:limit]
    next_cursor = _cursor(page[-1][0]) if len(items) > limit and page else None
    return JSONResponse({"items": [view for _, view in page], "next_cursor": next_cursor}, headers={**headers, "Cache-Control": "private, no-cache"})


CURSOR_PATTERN = r"^[0-9]{1,18}$"  # what a cursor is; clients pass it back as they got it


def _cursor(position: int) -> str:
    return str(position)


def _page(request: Request) -> tuple[int, int]:
    errors = []
    after, limit = 0, DEFAULT_LIMIT
    raw_limit = request.query_params.get("limit")
    if raw_limit is not None:
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
            errors.append({"field": "limit", "message": f"an integer from 1 to {MAX_LIMIT}"})
        else:
            limit = int(raw_limit)
    raw_cursor = request.query_params.get("cursor")
    if raw_cursor is not None:
        if re.match(CURSOR_PATTERN, raw_cursor):
            after = int(raw_cursor)
        else:
            errors.append({"field": "cursor", "message": "not a cursor returned by this API"})
    if errors:
        raise ValidationFailed("invalid paging parameters", errors=errors)
    return after, limit


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


_TOKEN_PARAMS: tuple[dict[str, Any], ...] = (
    {"name": consistency.QUERY, "in": "query", "required": False, "schema": {"type": "string", "pattern": consistency.PATTERN},
     "description": "Read your writes: the consistency_token of a write answer (also its Consistency-Token header); the read "
                    "waits, at most READ_CONSISTENCY_TIMEOUT, until the read models reflect it, else 503 with Retry-After"},
)  # fmt: skip
_BY_ID_PARAMS = (
    *_TOKEN_PARAMS,
    {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}, "description": "ETag of a copy held: 304 if unchanged"},
)  # fmt: skip
_PAGE_PARAMS = (
    {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string", "pattern": CURSOR_PATTERN},
     "description": "next_cursor of the previous page (opaque: pass it back as it came)"},
    {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}},
)  # fmt: skip
_TASK_FILTERS = (
    {"name": "status", "in": "query", "required": False, "schema": {"type": "string", "enum": list(TASK_STATUSES)}},
    {"name": "kind", "in": "query", "required": False, "schema": {"type": "string", "pattern": _KIND.pattern}},
)  # fmt: skip
_READ_ERRORS = (401, 403, 404, 422, 503)

READ_ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/v1/users/me", get_me, "The caller's own user", status=200, errors=_READ_ERRORS, query=_BY_ID_PARAMS, response=UserView),
    Endpoint("GET", "/v1/users/{user_id}", get_user, "A user (oneself, or any for admins)", status=200, errors=_READ_ERRORS, query=_BY_ID_PARAMS, response=UserView),
    Endpoint("GET", "/v1/projects", list_projects, "The projects the caller may see", status=200, errors=_READ_ERRORS, query=(*_TOKEN_PARAMS, *_PAGE_PARAMS), response=ProjectList),
    Endpoint("GET", "/v1/projects/{project_id}", get_project, "A project with its members and task counts", status=200, errors=_READ_ERRORS, query=_BY_ID_PARAMS, response=ProjectView),
    Endpoint("GET", "/v1/projects/{project_id}/tasks", list_tasks, "A project's tasks, filtered and paged", status=200, errors=_READ_ERRORS, query=(*_TOKEN_PARAMS, *_TASK_FILTERS, *_PAGE_PARAMS), response=TaskList),
    Endpoint("GET", "/v1/tasks/{task_id}", get_task, "A task", status=200, errors=_READ_ERRORS, query=_BY_ID_PARAMS, response=TaskView),
    Endpoint("GET", "/v1/admin/projection-failures", projection_failures, "Events the projections parked, with their errors (admins)",
             status=200, errors=_READ_ERRORS, response=FailureList,
             query=({"name": "include_resolved", "in": "query", "required": False, "schema": {"type": "boolean", "default": False}},
                    {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}})),
)  # fmt: skip
