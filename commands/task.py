"""The task aggregate: stream ``task-<task_id>``.

Lifecycle (every other transition raises ``IllegalTransition``)::

    (none)  --SubmitTask-->  queued
    queued  --StartTask-->   running      attempt must be attempts + 1
    running --SucceedTask--> succeeded    attempt must be the current one
    running --FailTask-->    queued       if retryable and attempt < max_attempts
    running --FailTask-->    failed       otherwise (final)
    queued | running --CancelTask--> cancelled
    failed  --RequeueTask--> queued       one more attempt (max_attempts = attempts + 1)

``succeeded``, ``failed`` and ``cancelled`` are final, except that an admin may requeue a
failed task while it has used fewer than MAX_ATTEMPTS_LIMIT attempts. A report naming another attempt
than the current one raises ``StaleAttempt`` (a timed-out worker reporting late). A worker
whose task was cancelled while running gets ``IllegalTransition`` for its report and
should drop its result. Timeouts are reported by a sweeper as ``FailTask`` with the
current attempt. Whether the project exists and accepts tasks is the handler's check.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import TypeAlias

from commands.decider import Decider, InvalidHistory
from commands.errors import AlreadyExists, IllegalTransition, NotFound, StaleAttempt
from schemas.envelope import stream_name
from schemas.tasks import (
    MAX_ATTEMPTS_LIMIT,
    TERMINAL_STATUSES,
    CancelTask,
    FailTask,
    RequeueTask,
    StartTask,
    SubmitTask,
    SucceedTask,
    TaskCancelled,
    TaskCommand,
    TaskEvent,
    TaskFailed,
    TaskRequeued,
    TaskStarted,
    TaskStatus,
    TaskSubmitted,
    TaskSucceeded,
)

CATEGORY = "task"

# Every status change a decision may make; None is "no stream yet".
LEGAL_EDGES: frozenset[tuple[TaskStatus | None, TaskStatus]] = frozenset(
    {
        (None, "queued"),
        ("queued", "running"),
        ("queued", "cancelled"),
        ("running", "succeeded"),
        ("running", "failed"),
        ("running", "queued"),
        ("running", "cancelled"),
        ("failed", "queued"),
    }
)


@dataclass(frozen=True, slots=True)
class TaskState:
    """``attempts`` counts started attempts; ``worker_id`` is the current or last worker."""

    task_id: uuid.UUID
    project_id: uuid.UUID
    kind: str
    priority: int
    max_attempts: int
    timeout_seconds: int
    status: TaskStatus = "queued"
    attempts: int = 0
    worker_id: str | None = None

    @property
    def final(self) -> bool:
        return self.status in TERMINAL_STATUSES


State: TypeAlias = TaskState | None


def stream_for(task_id: uuid.UUID) -> str:
    return stream_name(CATEGORY, task_id)


def decide(state: State, command: TaskCommand) -> list[TaskEvent]:
    if isinstance(command, SubmitTask):
        if state is not None:
            raise AlreadyExists(f"task {command.task_id} already exists", task_id=str(command.task_id))
        return [
            TaskSubmitted(
                task_id=command.task_id,
                project_id=command.project_id,
                kind=command.kind,
                payload=command.payload,
                priority=command.priority,
                max_attempts=command.max_attempts,
                timeout_seconds=command.timeout_seconds,
            )
        ]
    if state is None:
        raise NotFound(f"task {command.task_id} does not exist", task_id=str(command.task_id))
    match command:
        case StartTask(worker_id=worker_id, attempt=attempt, lease_id=lease_id, lease_seconds=lease_seconds):
            _require_status(state, command, "queued")
            _require_attempt(state, attempt, state.attempts + 1)
            return [
                TaskStarted(task_id=state.task_id, worker_id=worker_id, attempt=attempt, lease_id=lease_id, lease_seconds=lease_seconds)
            ]
        case SucceedTask(attempt=attempt, result_ref=result_ref, summary=summary, result=result):
            _require_status(state, command, "running")
            _require_attempt(state, attempt, state.attempts)
            return [
                TaskSucceeded(task_id=state.task_id, attempt=attempt, result_ref=result_ref, summary=summary, result=result)
            ]
        case FailTask(attempt=attempt, error=error, retryable=retryable):
            _require_status(state, command, "running")
            _require_attempt(state, attempt, state.attempts)
            retry = retryable and attempt < state.max_attempts
            return [TaskFailed(task_id=state.task_id, attempt=attempt, error=error, retry_scheduled=retry)]
        case CancelTask(reason=reason):
            _require_status(state, command, "queued", "running")
            return [TaskCancelled(task_id=state.task_id, reason=reason)]
        case RequeueTask(reason=reason):
            _require_status(state, command, "failed")
            if state.attempts >= MAX_ATTEMPTS_LIMIT:
                raise IllegalTransition(
                    f"task {state.task_id} used {state.attempts} attempts, the most a task may have",
                    task_id=str(state.task_id),
                    current_status=state.status,
                    command=command.TYPE,
                )
            return [TaskRequeued(task_id=state.task_id, max_attempts=state.attempts + 1, reason=reason)]
    raise TypeError(f"not a task command: {command!r}")


def _require_status(state: TaskState, command: TaskCommand, *allowed: TaskStatus) -> None:
    if state.status not in allowed:
        raise IllegalTransition(
            f"task {state.task_id} is {state.status}: {command.TYPE} needs {' or '.join(allowed)}",
            task_id=str(state.task_id),
            current_status=state.status,
            command=command.TYPE,
        )


def _require_attempt(state: TaskState, attempt: int, expected: int) -> None:
    if attempt != expected:
        raise StaleAttempt(
            f"task {state.task_id}: attempt {attempt} is not the expected attempt {expected}",
            task_id=str(state.task_id),
            attempt=attempt,
            expected_attempt=expected,
        )


def evolve(state: State, event: TaskEvent) -> State:
    if isinstance(event, TaskSubmitted):
        if state is not None:
            raise InvalidHistory(state, event)
        return TaskState(
            task_id=event.task_id,
            project_id=event.project_id,
            kind=event.kind,
            priority=event.priority,
            max_attempts=event.max_attempts,
            timeout_seconds=event.timeout_seconds,
        )
    if state is None:
        raise InvalidHistory(state, event)
    match event:
        case TaskStarted(worker_id=worker_id, attempt=attempt):
            return replace(state, status="running", attempts=attempt, worker_id=worker_id)
        case TaskSucceeded():
            return replace(state, status="succeeded")
        case TaskFailed(retry_scheduled=retry_scheduled):
            return replace(state, status="queued" if retry_scheduled else "failed")
        case TaskCancelled():
            return replace(state, status="cancelled")
        case TaskRequeued(max_attempts=max_attempts):
            return replace(state, status="queued", max_attempts=max_attempts)
    raise TypeError(f"not a task event: {event!r}")


DECIDER: Decider[State, TaskCommand, TaskEvent] = Decider(CATEGORY, None, decide, evolve)
