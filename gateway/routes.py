"""The endpoint table: each write turns a request into one service call. No rules live here.

``ENDPOINTS`` drives both the Starlette routes and the OpenAPI document.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from commands.authz import Actor
from commands.service import InvalidCredentials, Service
from gateway.auth import AuthError, TokenIssuer, TokenVerifier, bearer_principal
from gateway.bodies import (
    ChangeRoleBody,
    CreateProjectBody,
    PutMemberBody,
    ReasonBody,
    RegisterUserBody,
    SubmitTaskBody,
    TokenBody,
    TokenResponse,
    UpdateProjectBody,
    UpdateUserBody,
)
from gateway.http import path_uuid, read_body, write_context, written
from gateway.ratelimit import RateLimits
from gateway import worker_routes as w
from gateway.worker_routes import WorkerDeps


@dataclass(frozen=True, slots=True)
class Deps:
    service: Service
    verifier: TokenVerifier
    issuer: TokenIssuer | None
    max_body_bytes: int
    limits: RateLimits | None = None  # per route class, checked for every endpoint by gateway.app
    reads: Any = None  # gateway.readmodels.Reads: the query API (None: this gateway serves no reads)
    workers: WorkerDeps | None = None  # the worker pool's endpoints (results, dead tasks, webhooks)


Handler = Callable[[Request, Deps], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    body: type[BaseModel] | None = None
    status: int = 201
    auth: bool = True
    optional_auth: bool = False  # with auth=False: a token may be sent, and is then checked
    errors: tuple[int, ...] = field(default=(401, 403, 404, 409, 413, 415, 422))
    query: tuple[dict[str, Any], ...] = ()  # reads: their query and header parameters, as OpenAPI objects
    limit: str | None = None  # the rate-limit route class; by default "read" for GET, else "write"
    body_required: bool = True  # False: the body may be left out entirely (no Content-Type, no bytes)
    writes: bool | None = None  # takes If-Match, Idempotency-Key, X-Correlation-ID; by default: not GET
    creates: str | None = None  # the path parameter that the answer's ``id`` fills (OpenAPI links)
    response: type[BaseModel] | type[bytes] | None = None  # the success body in the OpenAPI document; None: Accepted

    @property
    def route_class(self) -> str:
        return self.limit or ("read" if self.method in ("GET", "HEAD") else "write")

    @property
    def is_write(self) -> bool:
        return self.writes if self.writes is not None else self.method not in ("GET", "HEAD")


async def _actor(request: Request, deps: Deps) -> Actor:
    principal = await bearer_principal(request, deps.verifier)
    return Actor(user_id=principal.subject, role=principal.role)


async def _optional_actor(request: Request, deps: Deps) -> Actor | None:
    return await _actor(request, deps) if "authorization" in request.headers else None


async def register_user(request: Request, deps: Deps) -> Response:
    actor = await _optional_actor(request, deps)
    body, raw = await read_body(request, RegisterUserBody, deps.max_body_bytes)
    result = await deps.service.register_user(
        actor, email=body.email, display_name=body.display_name, password=body.password, role=body.role,
        ctx=write_context(request, actor, raw),
    )  # fmt: skip
    return written(result, status=201, location=f"/v1/users/{result.entity_id}")


async def issue_token(request: Request, deps: Deps) -> Response:
    body, _ = await read_body(request, TokenBody, deps.max_body_bytes)
    if deps.limits is not None:
        await deps.limits.admit_login(request, body.email)
    if deps.issuer is None:
        raise AuthError("this gateway verifies tokens but does not issue them", error=None)
    try:
        account = await deps.service.authenticate(body.email, body.password)
    except InvalidCredentials:
        raise AuthError("wrong email or password", error="invalid_grant") from None
    token = deps.issuer.issue(str(account.user_id), account.role)
    return JSONResponse(
        {"access_token": token, "token_type": "Bearer", "expires_in": deps.issuer.ttl_seconds},
        headers={"Cache-Control": "no-store"},
    )


async def update_user(request: Request, deps: Deps) -> Response:
    actor, user_id = await _actor(request, deps), path_uuid(request, "user_id")
    body, raw = await read_body(request, UpdateUserBody, deps.max_body_bytes)
    result = await deps.service.update_user(actor, user_id, display_name=body.display_name, ctx=write_context(request, actor, raw))
    return written(result, status=200, location=f"/v1/users/{user_id}")


async def change_role(request: Request, deps: Deps) -> Response:
    actor, user_id = await _actor(request, deps), path_uuid(request, "user_id")
    body, raw = await read_body(request, ChangeRoleBody, deps.max_body_bytes)
    result = await deps.service.change_role(actor, user_id, role=body.role, ctx=write_context(request, actor, raw))
    return written(result, status=200, location=f"/v1/users/{user_id}")


async def deactivate_user(request: Request, deps: Deps) -> Response:
    actor, user_id = await _actor(request, deps), path_uuid(request, "user_id")
    body, raw = await _optional_body(request, deps, ReasonBody)
    result = await deps.service.deactivate_user(actor, user_id, reason=body.reason, ctx=write_context(request, actor, raw))
    return written(result, status=200, location=f"/v1/users/{user_id}")


async def create_project(request: Request, deps: Deps) -> Response:
    actor = await _actor(request, deps)
    body, raw = await read_body(request, CreateProjectBody, deps.max_body_bytes)
    result = await deps.service.create_project(actor, name=body.name, description=body.description, ctx=write_context(request, actor, raw))
    return written(result, status=201, location=f"/v1/projects/{result.entity_id}")


async def update_project(request: Request, deps: Deps) -> Response:
    actor, project_id = await _actor(request, deps), path_uuid(request, "project_id")
    body, raw = await read_body(request, UpdateProjectBody, deps.max_body_bytes)
    changes = body.model_dump(exclude_none=True)
    result = await deps.service.update_project(actor, project_id, changes=changes, ctx=write_context(request, actor, raw))
    return written(result, status=200, location=f"/v1/projects/{project_id}")


async def archive_project(request: Request, deps: Deps) -> Response:
    actor, project_id = await _actor(request, deps), path_uuid(request, "project_id")
    result = await deps.service.archive_project(actor, project_id, ctx=write_context(request, actor, b""))
    return written(result, status=200, location=f"/v1/projects/{project_id}")


async def put_member(request: Request, deps: Deps) -> Response:
    actor = await _actor(request, deps)
    project_id, user_id = path_uuid(request, "project_id"), path_uuid(request, "user_id")
    body, raw = await read_body(request, PutMemberBody, deps.max_body_bytes)
    result = await deps.service.put_member(actor, project_id, user_id, role=body.role, ctx=write_context(request, actor, raw))
    return written(result, status=200, location=f"/v1/projects/{project_id}/members/{user_id}")


async def remove_member(request: Request, deps: Deps) -> Response:
    actor = await _actor(request, deps)
    project_id, user_id = path_uuid(request, "project_id"), path_uuid(request, "user_id")
    result = await deps.service.remove_member(actor, project_id, user_id, ctx=write_context(request, actor, b""))
    return written(result, status=200, location=f"/v1/projects/{project_id}")


async def submit_task(request: Request, deps: Deps) -> Response:
    actor, project_id = await _actor(request, deps), path_uuid(request, "project_id")
    body, raw = await read_body(request, SubmitTaskBody, deps.max_body_bytes)
    result = await deps.service.submit_task(actor, project_id, spec=body.model_dump(), ctx=write_context(request, actor, raw))
    return written(result, status=202, location=f"/v1/tasks/{result.entity_id}")


async def cancel_task(request: Request, deps: Deps) -> Response:
    actor, task_id = await _actor(request, deps), path_uuid(request, "task_id")
    body, raw = await _optional_body(request, deps, ReasonBody)
    result = await deps.service.cancel_task(actor, task_id, reason=body.reason, ctx=write_context(request, actor, raw))
    return written(result, status=202, location=f"/v1/tasks/{task_id}")


async def _optional_body(request: Request, deps: Deps, model: type[Any]) -> tuple[Any, bytes]:
    """A body that may be left out entirely (no Content-Type, no bytes)."""
    if not request.headers.get("content-type") and request.headers.get("content-length", "0") == "0":
        return model(), b""
    return await read_body(request, model, deps.max_body_bytes)


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("POST", "/v1/users", register_user, "Register a user", RegisterUserBody, auth=False, optional_auth=True, errors=(401, 403, 409, 413, 415, 422), limit="credentials", creates="user_id"),
    Endpoint("POST", "/v1/auth/token", issue_token, "Exchange email and password for an access token", TokenBody, status=200, auth=False, errors=(401, 413, 415, 422), limit="credentials", writes=False, response=TokenResponse),
    Endpoint("PATCH", "/v1/users/{user_id}", update_user, "Update a user's profile", UpdateUserBody, status=200),
    Endpoint("POST", "/v1/users/{user_id}/role", change_role, "Change a user's role (admins)", ChangeRoleBody, status=200),
    Endpoint("POST", "/v1/users/{user_id}/deactivate", deactivate_user, "Deactivate a user", ReasonBody, status=200, body_required=False),
    Endpoint("POST", "/v1/projects", create_project, "Create a project owned by the caller", CreateProjectBody, creates="project_id"),
    Endpoint("PATCH", "/v1/projects/{project_id}", update_project, "Rename or describe a project", UpdateProjectBody, status=200),
    Endpoint("POST", "/v1/projects/{project_id}/archive", archive_project, "Archive a project", status=200),
    Endpoint("PUT", "/v1/projects/{project_id}/members/{user_id}", put_member, "Add a member or change their role", PutMemberBody, status=200),
    Endpoint("DELETE", "/v1/projects/{project_id}/members/{user_id}", remove_member, "Remove a member", status=200),
    Endpoint("POST", "/v1/projects/{project_id}/tasks", submit_task, "Submit a task", SubmitTaskBody, status=202, creates="task_id"),
    Endpoint("POST", "/v1/tasks/{task_id}/cancel", cancel_task, "Cancel a task", ReasonBody, status=202, body_required=False),
)  # fmt: skip

# The worker pool (issue 10): results and download links, dead tasks and requeue, webhooks.
ENDPOINTS += (
    Endpoint("GET", "/v1/tasks/{task_id}/result", w.task_result, "A succeeded task's result: inline, or a time-limited download link", status=200, errors=(401, 404, 409), response=w.Document),
    Endpoint("GET", "/v1/blobs", w.download_blob, "Download a result from the local store with a signed link", status=200, auth=False, errors=(403, 404, 422), response=bytes, query=w.LINK_PARAMETERS),
    Endpoint("GET", "/v1/admin/tasks/dead", w.dead_tasks, "Finally failed tasks, most recent first (admins)", status=200, errors=(401, 403, 422), response=w.Listing, query=w.LIMIT_PARAMETER),
    Endpoint("POST", "/v1/tasks/{task_id}/retry", w.retry_task, "Requeue a finally failed task for one more attempt (admins)", ReasonBody, status=202),
    Endpoint("POST", "/v1/projects/{project_id}/webhooks", w.register_webhook, "Register a webhook endpoint (answers its secret once)", w.WebhookBody, status=201, response=w.Document),
    Endpoint("GET", "/v1/projects/{project_id}/webhooks", w.list_webhooks, "A project's webhook endpoints, with why one was disabled", status=200, errors=(401, 403, 404), response=w.Listing),
    Endpoint("DELETE", "/v1/projects/{project_id}/webhooks/{webhook_id}", w.delete_webhook, "Delete a webhook endpoint", status=200, errors=(401, 403, 404), response=w.Document),
    Endpoint("POST", "/v1/projects/{project_id}/webhooks/{webhook_id}/rotate", w.rotate_webhook, "New secret; the old one signs for a grace period", status=200, errors=(401, 403, 404), response=w.Document),
    Endpoint("GET", "/v1/projects/{project_id}/webhooks/{webhook_id}/deliveries", w.webhook_deliveries, "The endpoint's delivery log, newest first", status=200, errors=(401, 403, 404), response=w.Listing),
)  # fmt: skip
