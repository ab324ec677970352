"""Time travel and the audit log over HTTP, read from the events table (never the read models).

- ``GET /v1/{users|projects|tasks}/{id}?as_of=<position or RFC 3339 time>``: the entity as it
  was then, its stream folded with the read model's own ``apply`` (``projections.timetravel``),
  in the shape of the live answer. Before its first event: 404. Without ``as_of`` the live
  handler answers, untouched (``with_audit`` only puts a branch in front of it).
- ``GET /v1/events``: the audit log for admins and analysts (``gateway.event_access``), in
  global order, a page at a time (``event_store.audit`` says why a client paging with
  ``next_cursor`` sees every event exactly once).
- ``GET /v1/{users|projects|tasks}/{id}/history``: one entity's events: who (the metadata's
  actor), when, what (type and public data), at which version and position; paged by version.

Visibility is decided *now*, never *then*: a historical answer or a history is shown to whoever
may see the entity today (a project's or task's project's members, as its stream says now; a
user to themselves; admins everything), with the caller's role as the live reads take it (the
users read model, so a demotion or a deactivation binds existing tokens). A member removed
since no longer reads the project's past, and one added since reads all of it: the audit trail
belongs to the project, not to the member. Event data always goes through
``schemas.catalog.public_data``: a password hash never leaves the store.

A project's ``task_counts`` as of then are folded from the task streams of the project up to
that point; which tasks belong to the project comes from the tasks read model (a task never
changes project), so a task submitted within the read model's lag is not counted yet.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from commands import authz
from commands.authz import Actor
from commands.errors import NotFound
from event_store.audit import LogFilter, read_log, read_stream_page, read_streams_until
from event_store.postgres import PostgresEventStore
from gateway import audit_params as p
from gateway.auth import Principal, bearer_principal
from gateway.event_access import allowed_categories
from gateway.http import path_uuid
from gateway.readmodels import Entry
from gateway.reads import _answer, _caller, _prepare, _reads
from gateway.routes import Deps, Endpoint, _actor
from gateway.schema_routes import SCHEMA_ENDPOINTS
from gateway.views_audit import EventList, HistoryList
from projections import timetravel, views
from projections.catalog import MODELS
from projections.model import ReadModel, Row
from schemas.catalog import public_data, registry
from schemas.envelope import RecordedEvent, category_of

Handler = Callable[[Request, Deps], Awaitable[Response]]


def _store(deps: Deps) -> PostgresEventStore:
    return deps.service.store  # type: ignore[no-any-return]


async def _stored_caller(request: Request, deps: Deps) -> Actor:
    """The caller with the role the live reads give them (403 when deactivated)."""
    return await _caller(await _actor(request, deps), _reads(deps), fresh=False)


def _bound(point: p.Point) -> dict[str, Any]:
    return {"position": point.position, "time": point.time}


def _members(project: Row | None) -> dict[str, str]:
    return dict(project["members"]) if project is not None and project.get("version", 0) > 0 else {}


def _may_see_project(project_now: Row | None, caller: Actor) -> bool:
    return project_now is not None and (caller.is_admin or caller.user_id in _members(project_now))


async def _project_now(store: PostgresEventStore, project_id: str) -> Row | None:
    return timetravel.fold(MODELS["projects"], await store.read_stream(f"project-{project_id}"), registry())


def _historical(request: Request, model: str, view: dict[str, Any]) -> Response:
    entry = Entry(revision=views.revision(model, view), body=views.dumps(view), view=view, etag=views.etag(model, view))
    return _answer(request, entry, {})


# --- time travel ------------------------------------------------------------------------------


async def user_as_of(request: Request, deps: Deps) -> Response:
    actor = await _actor(request, deps)
    user_id = path_uuid(request, "user_id")
    point = p.as_of(request.query_params)
    _, caller, _ = await _prepare(request, deps, actor)
    authz.self_or_admin(caller, user_id)
    model = MODELS["users"]
    row = timetravel.fold(model, await read_streams_until(_store(deps), [model.stream_of(user_id)], **_bound(point)), registry())
    if row is None:
        raise NotFound("this user did not exist then")
    return _historical(request, "users", timetravel.view(model, row))


async def project_as_of(request: Request, deps: Deps) -> Response:
    actor = await _actor(request, deps)
    project_id = path_uuid(request, "project_id")
    point = p.as_of(request.query_params)
    reads, caller, _ = await _prepare(request, deps, actor)  # a consistency token: the tasks read model has its tasks
    store = _store(deps)
    if not _may_see_project(await _project_now(store, str(project_id)), caller):
        raise NotFound("no such project")
    model = MODELS["projects"]
    row = timetravel.fold(model, await read_streams_until(store, [model.stream_of(project_id)], **_bound(point)), registry())
    if row is None or row.get("version", 0) == 0:
        raise NotFound("this project did not exist then")
    async with reads.pool.connection() as conn:
        cur = await conn.execute("SELECT task_id FROM tasks WHERE project_id = %s", [project_id])
        task_streams = [f"task-{task_id}" for (task_id,) in await cur.fetchall()]
    counts = timetravel.task_counts(await read_streams_until(store, task_streams, **_bound(point)), registry())
    return _historical(request, "projects", timetravel.view(model, row, counts))


async def task_as_of(request: Request, deps: Deps) -> Response:
    actor = await _actor(request, deps)
    task_id = path_uuid(request, "task_id")
    point = p.as_of(request.query_params)
    _, caller, _ = await _prepare(request, deps, actor)
    store = _store(deps)
    model = MODELS["tasks"]
    events = await store.read_stream(model.stream_of(task_id))
    if not events or not _may_see_project(await _project_now(store, str(events[0].data.get("project_id"))), caller):
        raise NotFound("no such task")
    then = [e for e in events if (point.position is None or e.global_position <= point.position)
            and (point.time is None or e.recorded_at <= point.time)]  # fmt: skip
    row = timetravel.fold(model, then, registry())
    if row is None:
        raise NotFound("this task did not exist then")
    return _historical(request, "tasks", timetravel.view(model, row))


def _with_as_of(endpoint: Endpoint, historical: Handler) -> Endpoint:
    """``endpoint`` answering ``historical`` when the request has ``as_of``, else as before."""
    live = endpoint.handler

    async def handler(request: Request, deps: Deps) -> Response:
        if "as_of" in request.query_params:
            return await historical(request, deps)
        return await live(request, deps)

    handler.__name__ = live.__name__  # the same operation in the OpenAPI document
    return replace(endpoint, handler=handler, query=(*endpoint.query, AS_OF_PARAMETER))


# --- the audit log ----------------------------------------------------------------------------


def public_event(event: RecordedEvent) -> dict[str, Any]:
    """An event as the audit API shows it: as stored, its data without private fields."""
    shown = event.to_json()
    shown["data"] = public_data(event.type, event.data)
    return shown


async def list_events(request: Request, deps: Deps) -> Response:
    principal = await bearer_principal(request, deps.verifier)
    query = p.log_query(request.query_params)
    caller = await _caller(Actor(principal.subject, principal.role), _reads(deps), fresh=False)
    principal = Principal(principal.subject, caller.role, principal.claims)  # type: ignore[arg-type]
    categories = allowed_categories(principal, [query.category] if query.category else None)
    if query.stream is not None:
        allowed_categories(principal, [category_of(query.stream)])  # 403 for a stream of a category not readable
    after, before = query.after or p.Point(), query.before or p.Point()
    where = LogFilter(
        categories=sorted(categories), stream=query.stream, types=[query.type] if query.type else None, actor=query.actor,
        after_position=max(query.cursor, after.position or 0), before_position=before.position,
        after_time=after.time, before_time=before.time,
    )  # fmt: skip
    events = await read_log(_store(deps), where, query.limit + 1)
    page = events[: query.limit]
    next_cursor = str(page[-1].global_position) if len(events) > query.limit else None
    return _page(request, [public_event(e) for e in page], next_cursor)


def _page(request: Request, items: list[dict[str, Any]], next_cursor: str | None) -> Response:
    body: dict[str, Any] = {"items": items, "next_cursor": next_cursor, "next": None}
    headers = {"Cache-Control": "private, no-cache"}
    if next_cursor is not None:
        params = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor"] + [("cursor", next_cursor)]
        body["next"] = f"{request.url.path}?{urlencode(params)}"
        headers["Link"] = f'<{body["next"]}>; rel="next"'
    return JSONResponse(body, headers=headers)


# --- one entity's history ---------------------------------------------------------------------


def history_item(event: RecordedEvent) -> dict[str, Any]:
    return {
        "version": event.version,
        "global_position": event.global_position,
        "recorded_at": event.recorded_at.isoformat(),
        "type": event.type,
        "schema_version": event.schema_version,
        "actor": event.metadata.get("actor"),
        "correlation_id": event.metadata.get("correlation_id"),
        "event_id": str(event.id),
        "data": public_data(event.type, event.data),
    }


async def _history(request: Request, deps: Deps, model: ReadModel, entity_id: uuid.UUID) -> Response:
    after, limit = p.history_page(request.query_params)
    events = await read_stream_page(_store(deps), model.stream_of(entity_id), after, limit + 1)
    if not events and after == 0:
        raise NotFound(f"no such {model.category}")
    page = events[:limit]
    next_cursor = str(page[-1].version) if len(events) > limit else None
    return _page(request, [history_item(e) for e in page], next_cursor)


async def user_history(request: Request, deps: Deps) -> Response:
    actor = await _actor(request, deps)
    user_id = path_uuid(request, "user_id")
    caller = await _caller(actor, _reads(deps), fresh=False)
    authz.self_or_admin(caller, user_id)
    return await _history(request, deps, MODELS["users"], user_id)


async def project_history(request: Request, deps: Deps) -> Response:
    caller = await _stored_caller(request, deps)
    project_id = path_uuid(request, "project_id")
    if not _may_see_project(await _project_now(_store(deps), str(project_id)), caller):
        raise NotFound("no such project")
    return await _history(request, deps, MODELS["projects"], project_id)


async def task_history(request: Request, deps: Deps) -> Response:
    caller = await _stored_caller(request, deps)
    task_id = path_uuid(request, "task_id")
    store = _store(deps)
    first = await store.read_stream(MODELS["tasks"].stream_of(task_id), 1, 1)
    if not first or not _may_see_project(await _project_now(store, str(first[0].data.get("project_id"))), caller):
        raise NotFound("no such task")
    return await _history(request, deps, MODELS["tasks"], task_id)


# --- the endpoint table -----------------------------------------------------------------------

AS_OF_PARAMETER: dict[str, Any] = {
    "name": "as_of", "in": "query", "required": False,
    "schema": {"anyOf": [{"type": "string", "pattern": p.POSITION_PATTERN}, {"type": "string", "format": "date-time"}]},
    "description": "Time travel: the resource as it was at this global position (digits) or RFC 3339 time (with an "
                   "offset), folded from its events; 404 if it did not exist then. Visibility is decided as of now.",
}  # fmt: skip
_POINT = {"anyOf": [{"type": "string", "pattern": p.POSITION_PATTERN}, {"type": "string", "format": "date-time"}]}
_PAGE = (
    {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string", "pattern": p.POSITION_PATTERN},
     "description": "next_cursor of the previous page (pass it back as it came)"},
    {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": p.MAX_LIMIT, "default": p.DEFAULT_LIMIT}},
)  # fmt: skip
_LOG_FILTERS = (
    {"name": "stream", "in": "query", "required": False, "schema": {"type": "string", "pattern": p.STREAM_PATTERN}, "description": "one stream, e.g. task-<uuid>"},
    {"name": "category", "in": "query", "required": False, "schema": {"type": "string", "enum": sorted(p.ALL_CATEGORIES)}},
    {"name": "type", "in": "query", "required": False, "schema": {"type": "string", "enum": list(p.EVENT_TYPES)}},
    {"name": "actor", "in": "query", "required": False, "schema": {"type": "string", "pattern": p.ACTOR_PATTERN}, "description": "the metadata's actor (a user id, worker:<id>)"},
    {"name": "after", "in": "query", "required": False, "schema": _POINT, "description": "only events after this global position or time (exclusive)"},
    {"name": "before", "in": "query", "required": False, "schema": _POINT, "description": "only events before this global position or time (exclusive)"},
)  # fmt: skip
_ERRORS = (401, 403, 404, 422, 503)

AUDIT_ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/v1/events", list_events, "The audit log in global order (admins; analysts: the categories they may read)",
             status=200, errors=_ERRORS, query=(*_LOG_FILTERS, *_PAGE), response=EventList),
    Endpoint("GET", "/v1/users/{user_id}/history", user_history, "A user's events: who did what, when (oneself, or admins)",
             status=200, errors=_ERRORS, query=_PAGE, response=HistoryList),
    Endpoint("GET", "/v1/projects/{project_id}/history", project_history, "A project's events: who did what, when (its members)",
             status=200, errors=_ERRORS, query=_PAGE, response=HistoryList),
    Endpoint("GET", "/v1/tasks/{task_id}/history", task_history, "A task's events: who did what, when (its project's members)",
             status=200, errors=_ERRORS, query=_PAGE, response=HistoryList),
)  # fmt: skip

_AS_OF: dict[tuple[str, str], Handler] = {
    ("GET", "/v1/users/{user_id}"): user_as_of,
    ("GET", "/v1/projects/{project_id}"): project_as_of,
    ("GET", "/v1/tasks/{task_id}"): task_as_of,
}


def with_audit(endpoints: Sequence[Endpoint]) -> tuple[Endpoint, ...]:
    """``endpoints`` with ``as_of`` on the reads by id, and the audit and schema endpoints added."""
    found = {(e.method, e.path) for e in endpoints}
    missing = set(_AS_OF) - found
    if missing:
        raise ValueError(f"time travel needs the live reads {sorted(missing)}")
    wrapped = tuple(_with_as_of(e, _AS_OF[(e.method, e.path)]) if (e.method, e.path) in _AS_OF else e for e in endpoints)
    return (*wrapped, *AUDIT_ENDPOINTS, *SCHEMA_ENDPOINTS)
