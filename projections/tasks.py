"""The ``tasks`` read model: every task's status, attempts, the time of each transition, its result
reference and its last error; and, in its parent project's row, the count of tasks by status.

The counts are kept by difference: when a batch moves a task from status A to status B, the
project's A count goes down by one and its B count up by one, in the same transaction as the task
rows. Because the runtime applies an event only once (the row's version guards it, under the
partition's lock), the counts equal a count over the task rows.
"""

from __future__ import annotations

from typing import Any

from projections.model import ReadModel, Row, Steps
from schemas.envelope import RecordedEvent

NAME = "tasks"


def _submitted(row: Row, data: Any, at: Any, position: int) -> Row:
    return {"task_id": data["task_id"], "project_id": data["project_id"], "kind": data["kind"], "payload": data["payload"],
            "status": "queued", "priority": data["priority"], "max_attempts": data["max_attempts"],
            "timeout_seconds": data["timeout_seconds"], "attempts": 0, "worker_id": None, "submitted_at": at,
            "started_at": None, "succeeded_at": None, "failed_at": None, "cancelled_at": None, "result_ref": None,
            "result": None, "summary": None, "last_error": None, "cancel_reason": None, "retry_scheduled": False,
            "created_position": position}  # fmt: skip


def _started(row: Row, data: Any, at: Any, position: int) -> Row:
    return {"status": "running", "attempts": data["attempt"], "worker_id": data["worker_id"], "started_at": at,
            "retry_scheduled": False}  # fmt: skip


def _succeeded(row: Row, data: Any, at: Any, position: int) -> Row:
    return {"status": "succeeded", "succeeded_at": at, "result_ref": data.get("result_ref"), "result": data.get("result"),
            "summary": data.get("summary", "")}  # fmt: skip


def _failed(row: Row, data: Any, at: Any, position: int) -> Row:
    retry = bool(data["retry_scheduled"])
    return {"status": "queued" if retry else "failed", "failed_at": at, "last_error": data["error"], "retry_scheduled": retry}


def _requeued(row: Row, data: Any, at: Any, position: int) -> Row:  # an admin granted a finally failed task one more attempt
    return {"status": "queued", "max_attempts": data["max_attempts"], "retry_scheduled": False}


def _cancelled(row: Row, data: Any, at: Any, position: int) -> Row:
    return {"status": "cancelled", "cancelled_at": at, "cancel_reason": data.get("reason", "")}


STEPS = Steps(
    NAME,
    first="task.submitted",
    steps={
        "task.submitted": _submitted,
        "task.started": _started,
        "task.succeeded": _succeeded,
        "task.failed": _failed,
        "task.requeued": _requeued,
        "task.cancelled": _cancelled,
    },
)


def apply(row: Row | None, event: RecordedEvent) -> Row:
    return STEPS.apply(row, event)


MODEL = ReadModel(
    name=NAME,
    category="task",
    key="task_id",
    columns=("task_id", "project_id", "kind", "payload", "status", "priority", "max_attempts", "timeout_seconds",
             "attempts", "worker_id", "submitted_at", "started_at", "succeeded_at", "failed_at", "cancelled_at",
             "updated_at", "result_ref", "result", "summary", "last_error", "cancel_reason", "retry_scheduled",
             "created_position", "version", "global_position"),
    apply=apply,
    steps=STEPS,
)  # fmt: skip
