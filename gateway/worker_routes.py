"""The worker pool's endpoints: results and download links, dead tasks and requeue, webhooks.

Handlers only translate HTTP to calls; rules live in ``commands`` (who may see or manage a
project, the requeue decision) and in the worker pool's parts passed in ``WorkerDeps``.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from commands.authz import Actor, admin_only
from commands.errors import Conflict, NotFound, ValidationFailed
from gateway.auth import bearer_principal
from gateway.bodies import Body, ReasonBody
from schemas.tasks import TASK_EVENTS
from gateway.http import path_uuid, read_body, write_context, written


_EVENT_TYPE = "^(?:\\*|" + "|".join(re.escape(cls.TYPE) for cls in TASK_EVENTS) + ")$"  # a task event type, or * for all


class WebhookBody(Body):
    url: Annotated[str, StringConstraints(min_length=1, max_length=2000, pattern=r"^[hH][tT][tT][pP][sS]?://[!-~]+$")]  # visible ASCII only (an IDN host in punycode)
    event_types: Annotated[list[Annotated[str, StringConstraints(pattern=_EVENT_TYPE)]], Field(min_length=1, max_length=20)] = ["*"]


class Listing(BaseModel):
    model_config = ConfigDict(extra="allow")

    items: list[dict[str, Any]]


class Document(BaseModel):
    """A JSON object whose fields the endpoint's summary describes."""

    model_config = ConfigDict(extra="allow")


LINK_PARAMETERS: tuple[dict[str, Any], ...] = tuple(
    {"name": name, "in": "query", "required": True, "schema": {"type": "string"}, "description": text}
    for name, text in (("key", "the blob's key"), ("expires", "Unix seconds"), ("signature", "HMAC of key and expiry")))


LIMIT_PARAMETER: tuple[dict[str, Any], ...] = (
    {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100}},
)


@dataclass(frozen=True)
class WorkerDeps:
    links: Any  # workers.links.ResultLinks
    webhooks: Any  # workers.webhooks.endpoints.WebhookEndpoints
    dead_tasks: Any  # async (limit) -> list of dicts


class NoResult(Conflict):
    slug = "no-result"
    title = "The task has no result"


def _parts(deps: Any) -> WorkerDeps:
    if deps.workers is None:
        raise NotFound("the worker pool's endpoints are not configured on this gateway")
    return deps.workers


async def _actor(request: Request, deps: Any) -> Actor:
    principal = await bearer_principal(request, deps.verifier)
    return Actor(user_id=principal.subject, role=principal.role)


async def task_result(request: Request, deps: Any) -> Response:
    actor, task_id = await _actor(request, deps), path_uuid(request, "task_id")
    events = await deps.service.task_history(actor, task_id)
    last = events[-1]
    if last.type != "task.succeeded":
        status = {"task.started": "running", "task.cancelled": "cancelled", "task.requeued": "queued"}.get(last.type, "queued")
        if last.type == "task.failed":
            status = "queued" if last.data.get("retry_scheduled") else "failed"
        raise NoResult(f"the task is {status}", status=status)
    body: dict[str, Any] = {
        "task_id": str(task_id), "status": "succeeded", "attempt": last.data["attempt"], "summary": last.data.get("summary", ""),
        "result": last.data.get("result"), "result_ref": last.data.get("result_ref"), "download": None,
    }  # fmt: skip
    if body["result_ref"]:
        body["download"] = await _parts(deps).links.link(body["result_ref"], str(request.base_url))
    return JSONResponse(body)


async def download_blob(request: Request, deps: Any) -> Response:
    """No token: the signature is the authorisation (403 when altered or expired)."""
    q = request.query_params
    data, content_type = await _parts(deps).links.open_local(q.get("key", ""), q.get("expires", ""), q.get("signature", ""))
    return Response(data, media_type=content_type, headers={"Cache-Control": "private, no-store"})


async def dead_tasks(request: Request, deps: Any) -> Response:
    actor = await _actor(request, deps)
    admin_only(actor)
    raw = request.query_params.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= 500:
        raise ValidationFailed("limit must be an integer from 1 to 500", errors=[{"field": "limit", "message": "1 to 500"}])
    limit = int(raw)
    return JSONResponse({"items": await _parts(deps).dead_tasks(limit)})


async def retry_task(request: Request, deps: Any) -> Response:
    actor, task_id = await _actor(request, deps), path_uuid(request, "task_id")
    body, raw = await _optional_reason(request, deps)
    result = await deps.service.requeue_task(actor, task_id, reason=body.reason, ctx=write_context(request, actor, raw))
    return written(result, status=202, location=f"/v1/tasks/{task_id}")


async def _optional_reason(request: Request, deps: Any) -> tuple[ReasonBody, bytes]:
    if not request.headers.get("content-type") and request.headers.get("content-length", "0") == "0":
        return ReasonBody(), b""
    return await read_body(request, ReasonBody, deps.max_body_bytes)


async def _managed_project(request: Request, deps: Any) -> tuple[Actor, uuid.UUID]:
    actor, project_id = await _actor(request, deps), path_uuid(request, "project_id")
    await deps.service.authorize_project(actor, project_id, "manage")
    return actor, project_id


async def register_webhook(request: Request, deps: Any) -> Response:
    actor, project_id = await _managed_project(request, deps)
    body, _ = await read_body(request, WebhookBody, deps.max_body_bytes)
    endpoint = await _parts(deps).webhooks.register(project_id, body.url, body.event_types, actor.user_id)
    return JSONResponse(endpoint, status_code=201, headers={"Location": f"/v1/projects/{project_id}/webhooks/{endpoint['id']}", "Cache-Control": "no-store"})


async def list_webhooks(request: Request, deps: Any) -> Response:
    _, project_id = await _managed_project(request, deps)
    return JSONResponse({"items": await _parts(deps).webhooks.list(project_id)})


async def delete_webhook(request: Request, deps: Any) -> Response:
    _, project_id = await _managed_project(request, deps)
    webhook_id = path_uuid(request, "webhook_id")
    await _parts(deps).webhooks.delete(project_id, webhook_id)
    return JSONResponse({"id": str(webhook_id), "deleted": True})


async def rotate_webhook(request: Request, deps: Any) -> Response:
    _, project_id = await _managed_project(request, deps)
    endpoint = await _parts(deps).webhooks.rotate(project_id, path_uuid(request, "webhook_id"))
    return JSONResponse(endpoint, headers={"Cache-Control": "no-store"})


async def webhook_deliveries(request: Request, deps: Any) -> Response:
    _, project_id = await _managed_project(request, deps)
    return JSONResponse({"items": await _parts(deps).webhooks.deliveries(project_id, path_uuid(request, "webhook_id"))})
