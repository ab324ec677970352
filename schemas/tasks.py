"""Task events and commands: the lifecycle of one asynchronous unit of work.

Statuses (see ``commands.task`` for the rules): ``queued`` -> ``running`` ->
``succeeded`` | ``failed`` | back to ``queued`` for a retry; ``cancelled`` from
``queued`` or ``running``; an admin may requeue a ``failed`` task (``TaskRequeued``).
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, ClassVar, Literal, TypeAlias

from pydantic import Field, JsonValue, StringConstraints, field_validator

from schemas.base import Command, DomainEvent

TaskStatus: TypeAlias = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TASK_STATUSES: tuple[TaskStatus, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL_STATUSES: frozenset[TaskStatus] = frozenset({"succeeded", "failed", "cancelled"})

MAX_ATTEMPTS_LIMIT = 20
MAX_TIMEOUT_SECONDS = 86_400
MAX_PAYLOAD_BYTES = 64 * 1024  # checked on the command only, so stored events always decode
MAX_INLINE_RESULT_BYTES = 16 * 1024  # larger results go to blob storage (result_ref)

TaskKind = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")]
Priority = Annotated[int, Field(ge=0, le=9, description="0 is the lowest, 9 the highest")]
MaxAttempts = Annotated[int, Field(ge=1, le=MAX_ATTEMPTS_LIMIT)]
TimeoutSeconds = Annotated[int, Field(ge=1, le=MAX_TIMEOUT_SECONDS)]
Attempt = Annotated[int, Field(ge=1, le=MAX_ATTEMPTS_LIMIT)]
WorkerId = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
ResultRef = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
Summary = Annotated[str, StringConstraints(max_length=2000)]
ErrorText = Annotated[str, StringConstraints(min_length=1, max_length=4000)]
Reason = Annotated[str, StringConstraints(max_length=500)]
LeaseSeconds = Annotated[float, Field(gt=0, le=MAX_TIMEOUT_SECONDS)]
Payload = dict[str, JsonValue]


# -- events ---------------------------------------------------------------------------


class TaskSubmitted(DomainEvent):
    TYPE: ClassVar[str] = "task.submitted"

    task_id: uuid.UUID
    project_id: uuid.UUID
    kind: TaskKind
    payload: Payload
    priority: Priority
    max_attempts: MaxAttempts
    timeout_seconds: TimeoutSeconds


class TaskStarted(DomainEvent):
    """``lease_id``/``lease_seconds``: the worker's lease on the attempt (renewed while it runs;
    another worker takes the task over once it expires)."""

    TYPE: ClassVar[str] = "task.started"

    task_id: uuid.UUID
    worker_id: WorkerId
    attempt: Attempt
    lease_id: uuid.UUID | None = None
    lease_seconds: LeaseSeconds | None = None


class TaskSucceeded(DomainEvent):
    """``result`` holds a small result inline; a large one is in blob storage at ``result_ref``."""

    TYPE: ClassVar[str] = "task.succeeded"

    task_id: uuid.UUID
    attempt: Attempt
    result_ref: ResultRef | None = None
    summary: Summary = ""
    result: JsonValue = None


class TaskFailed(DomainEvent):
    """``retry_scheduled`` tells whether the task went back to ``queued`` or is finally failed."""

    TYPE: ClassVar[str] = "task.failed"

    task_id: uuid.UUID
    attempt: Attempt
    error: ErrorText
    retry_scheduled: bool


class TaskCancelled(DomainEvent):
    TYPE: ClassVar[str] = "task.cancelled"

    task_id: uuid.UUID
    reason: Reason = ""


class TaskRequeued(DomainEvent):
    """An admin put a finally failed task back in the queue with ``max_attempts`` as its new
    limit (one more attempt than it used)."""

    TYPE: ClassVar[str] = "task.requeued"

    task_id: uuid.UUID
    max_attempts: MaxAttempts
    reason: Reason = ""


TaskEvent: TypeAlias = TaskSubmitted | TaskStarted | TaskSucceeded | TaskFailed | TaskCancelled | TaskRequeued
TASK_EVENTS: tuple[type[DomainEvent], ...] = (
    TaskSubmitted, TaskStarted, TaskSucceeded, TaskFailed, TaskCancelled, TaskRequeued,
)  # fmt: skip


# -- commands -------------------------------------------------------------------------


class SubmitTask(Command):
    TYPE: ClassVar[str] = "task.submit"

    task_id: uuid.UUID
    project_id: uuid.UUID
    kind: TaskKind
    payload: Payload = Field(default_factory=dict)
    priority: Priority = 5
    max_attempts: MaxAttempts = 3
    timeout_seconds: TimeoutSeconds = 300

    @field_validator("payload")
    @classmethod
    def _payload_size(cls, payload: Payload) -> Payload:
        size = len(json.dumps(payload, separators=(",", ":")).encode())
        if size > MAX_PAYLOAD_BYTES:
            raise ValueError(f"payload is {size} bytes, more than {MAX_PAYLOAD_BYTES}")
        return payload


class StartTask(Command):
    """A worker claims the task for attempt ``attempt`` (1 for the first run)."""

    TYPE: ClassVar[str] = "task.start"

    task_id: uuid.UUID
    worker_id: WorkerId
    attempt: Attempt
    lease_id: uuid.UUID | None = None
    lease_seconds: LeaseSeconds | None = None


class SucceedTask(Command):
    TYPE: ClassVar[str] = "task.succeed"

    task_id: uuid.UUID
    attempt: Attempt
    result_ref: ResultRef | None = None
    summary: Summary = ""
    result: JsonValue = None

    @field_validator("result")
    @classmethod
    def _result_size(cls, result: JsonValue) -> JsonValue:
        size = len(json.dumps(result, separators=(",", ":")).encode())
        if size > MAX_INLINE_RESULT_BYTES:
            raise ValueError(f"an inline result is {size} bytes, more than {MAX_INLINE_RESULT_BYTES}: store it as a blob")
        return result


class FailTask(Command):
    """Report a failed attempt. ``retryable=False`` fails the task without a retry."""

    TYPE: ClassVar[str] = "task.fail"

    task_id: uuid.UUID
    attempt: Attempt
    error: ErrorText
    retryable: bool = True


class CancelTask(Command):
    TYPE: ClassVar[str] = "task.cancel"

    task_id: uuid.UUID
    reason: Reason = ""


class RequeueTask(Command):
    """Give a finally failed task one more attempt (admins)."""

    TYPE: ClassVar[str] = "task.requeue"

    task_id: uuid.UUID
    reason: Reason = ""


TaskCommand: TypeAlias = SubmitTask | StartTask | SucceedTask | FailTask | CancelTask | RequeueTask
TASK_COMMANDS: tuple[type[Command], ...] = (SubmitTask, StartTask, SucceedTask, FailTask, CancelTask, RequeueTask)
