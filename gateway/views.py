"""The answers of the query API, as pydantic models: they document it in the OpenAPI document.
The answers themselves are made by ``projections.views`` (the same JSON, byte for byte)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from schemas.tasks import TaskStatus


class UserView(BaseModel):
    id: str
    email: str
    display_name: str
    role: str
    active: bool
    created_at: str
    updated_at: str
    version: int


class Member(BaseModel):
    user_id: str
    role: str


class ProjectView(BaseModel):
    id: str
    owner_id: str
    name: str
    description: str
    archived: bool
    members: list[Member]
    task_counts: dict[TaskStatus, int]
    created_at: str
    updated_at: str
    version: int
    counts_revision: int


class TaskView(BaseModel):
    id: str
    project_id: str
    kind: str
    payload: dict[str, Any]
    status: TaskStatus
    priority: int
    max_attempts: int
    timeout_seconds: int
    attempts: int
    worker_id: str | None
    retry_scheduled: bool
    submitted_at: str
    started_at: str | None
    succeeded_at: str | None
    failed_at: str | None
    cancelled_at: str | None
    updated_at: str
    result_ref: str | None
    result: Any = None  # a small result, inline; a large one is at result_ref (GET /v1/tasks/{id}/result)
    summary: str | None
    last_error: str | None
    cancel_reason: str | None
    version: int


class ProjectList(BaseModel):
    items: list[ProjectView]
    next_cursor: str | None


class TaskList(BaseModel):
    items: list[TaskView]
    next_cursor: str | None


class Failure(BaseModel):
    projection: str
    stream_id: str
    version: int
    event_id: str
    global_position: int
    type: str
    error: str
    attempts: int
    first_failed_at: str
    last_failed_at: str
    resolved_at: str | None


class FailureList(BaseModel):
    items: list[Failure]
