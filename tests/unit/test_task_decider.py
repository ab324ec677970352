"""Task decider: the lifecycle, attempts and retries, given/when/then."""

from __future__ import annotations

import uuid

import pytest

from commands import task
from commands.decider import InvalidHistory, fold
from commands.errors import AlreadyExists, IllegalTransition, NotFound, StaleAttempt
from schemas.tasks import (
    CancelTask,
    FailTask,
    RequeueTask,
    StartTask,
    SubmitTask,
    SucceedTask,
    TaskCancelled,
    TaskFailed,
    TaskRequeued,
    TaskStarted,
    TaskSubmitted,
    TaskSucceeded,
)

TASK = uuid.UUID("00000000-0000-0000-0000-0000000000c1")
PROJECT = uuid.UUID("00000000-0000-0000-0000-0000000000b1")
SUBMITTED = TaskSubmitted(
    task_id=TASK,
    project_id=PROJECT,
    kind="report.render",
    payload={"n": 1},
    priority=5,
    max_attempts=2,
    timeout_seconds=60,
)
STARTED_1 = TaskStarted(task_id=TASK, worker_id="w1", attempt=1)
RETRY_1 = TaskFailed(task_id=TASK, attempt=1, error="boom", retry_scheduled=True)
STARTED_2 = TaskStarted(task_id=TASK, worker_id="w2", attempt=2)
SUCCEEDED_1 = TaskSucceeded(task_id=TASK, attempt=1)
FAILED_2 = TaskFailed(task_id=TASK, attempt=2, error="boom", retry_scheduled=False)
CANCELLED = TaskCancelled(task_id=TASK)


def when(given: list[object], command: object) -> list[object]:
    return list(task.decide(fold(task.evolve, None, given), command))  # type: ignore[arg-type]


def test_submit() -> None:
    command = SubmitTask(
        task_id=TASK, project_id=PROJECT, kind="report.render", payload={"n": 1}, max_attempts=2, timeout_seconds=60
    )
    assert when([], command) == [SUBMITTED]


def test_submit_twice_is_refused() -> None:
    with pytest.raises(AlreadyExists):
        when([SUBMITTED], SubmitTask(task_id=TASK, project_id=PROJECT, kind="x"))


def test_start_the_first_attempt() -> None:
    assert when([SUBMITTED], StartTask(task_id=TASK, worker_id="w1", attempt=1)) == [STARTED_1]


def test_succeed() -> None:
    command = SucceedTask(task_id=TASK, attempt=1, result_ref="s3://bucket/r", summary="ok")
    assert when([SUBMITTED, STARTED_1], command) == [
        TaskSucceeded(task_id=TASK, attempt=1, result_ref="s3://bucket/r", summary="ok")
    ]


def test_a_failure_with_attempts_left_schedules_a_retry() -> None:
    assert when([SUBMITTED, STARTED_1], FailTask(task_id=TASK, attempt=1, error="boom")) == [RETRY_1]
    state = fold(task.evolve, None, [SUBMITTED, STARTED_1, RETRY_1])
    assert state is not None and state.status == "queued" and state.attempts == 1


def test_the_retry_starts_as_the_next_attempt() -> None:
    assert when([SUBMITTED, STARTED_1, RETRY_1], StartTask(task_id=TASK, worker_id="w2", attempt=2)) == [STARTED_2]


def test_a_failure_of_the_last_attempt_is_final() -> None:
    assert when([SUBMITTED, STARTED_1, RETRY_1, STARTED_2], FailTask(task_id=TASK, attempt=2, error="boom")) == [
        FAILED_2
    ]
    state = fold(task.evolve, None, [SUBMITTED, STARTED_1, RETRY_1, STARTED_2, FAILED_2])
    assert state is not None and state.status == "failed" and state.final


def test_a_non_retryable_failure_is_final_even_with_attempts_left() -> None:
    assert when([SUBMITTED, STARTED_1], FailTask(task_id=TASK, attempt=1, error="bad input", retryable=False)) == [
        TaskFailed(task_id=TASK, attempt=1, error="bad input", retry_scheduled=False)
    ]


@pytest.mark.parametrize("given", [[SUBMITTED], [SUBMITTED, STARTED_1]], ids=["queued", "running"])
def test_cancel_a_live_task(given: list[object]) -> None:
    assert when(given, CancelTask(task_id=TASK, reason="not needed")) == [
        TaskCancelled(task_id=TASK, reason="not needed")
    ]


@pytest.mark.parametrize(
    "command",
    [
        StartTask(task_id=TASK, worker_id="w", attempt=1),
        SucceedTask(task_id=TASK, attempt=1),
        FailTask(task_id=TASK, attempt=1, error="e"),
        CancelTask(task_id=TASK),
    ],
    ids=lambda c: c.TYPE,
)
def test_commands_on_an_unknown_task_are_not_found(command: object) -> None:
    with pytest.raises(NotFound):
        when([], command)


FINAL_HISTORIES = {
    "succeeded": [SUBMITTED, STARTED_1, SUCCEEDED_1],
    "failed": [SUBMITTED, STARTED_1, RETRY_1, STARTED_2, FAILED_2],
    "cancelled": [SUBMITTED, CANCELLED],
}
ILLEGAL = [
    ("queued", [SUBMITTED], SucceedTask(task_id=TASK, attempt=1)),
    ("queued", [SUBMITTED], FailTask(task_id=TASK, attempt=1, error="e")),
    ("running", [SUBMITTED, STARTED_1], StartTask(task_id=TASK, worker_id="w", attempt=2)),
    *[
        (status, history, command)
        for status, history in FINAL_HISTORIES.items()
        for command in (
            StartTask(task_id=TASK, worker_id="w", attempt=2),
            SucceedTask(task_id=TASK, attempt=1),
            FailTask(task_id=TASK, attempt=1, error="e"),
            CancelTask(task_id=TASK),
        )
    ],
    *[
        (status, history, RequeueTask(task_id=TASK))
        for status, history in [("queued", [SUBMITTED]), ("running", [SUBMITTED, STARTED_1]),
                                ("succeeded", FINAL_HISTORIES["succeeded"]), ("cancelled", FINAL_HISTORIES["cancelled"])]
    ],  # fmt: skip
]


@pytest.mark.parametrize(("status", "given", "command"), ILLEGAL, ids=[f"{s}-{c.TYPE}" for s, _, c in ILLEGAL])
def test_illegal_transitions_are_refused(status: str, given: list[object], command: object) -> None:
    with pytest.raises(IllegalTransition) as caught:
        when(given, command)
    assert caught.value.extensions["current_status"] == status
    assert caught.value.extensions["command"] == command.TYPE  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("given", "command"),
    [
        ([SUBMITTED], StartTask(task_id=TASK, worker_id="w", attempt=2)),
        ([SUBMITTED, STARTED_1, RETRY_1], StartTask(task_id=TASK, worker_id="w", attempt=1)),
        ([SUBMITTED, STARTED_1, RETRY_1, STARTED_2], SucceedTask(task_id=TASK, attempt=1)),
        ([SUBMITTED, STARTED_1, RETRY_1, STARTED_2], FailTask(task_id=TASK, attempt=1, error="late")),
    ],
    ids=["skip-an-attempt", "repeat-an-attempt", "late-success", "late-failure"],
)
def test_reports_for_another_attempt_are_stale(given: list[object], command: object) -> None:
    with pytest.raises(StaleAttempt):
        when(given, command)


def test_evolve_tracks_status_attempts_and_worker() -> None:
    state = fold(task.evolve, None, [SUBMITTED, STARTED_1, RETRY_1, STARTED_2])
    assert state == task.TaskState(
        task_id=TASK,
        project_id=PROJECT,
        kind="report.render",
        priority=5,
        max_attempts=2,
        timeout_seconds=60,
        status="running",
        attempts=2,
        worker_id="w2",
    )


def test_evolve_refuses_events_before_submission() -> None:
    with pytest.raises(InvalidHistory):
        fold(task.evolve, None, [STARTED_1])


def test_succeed_with_an_inline_result() -> None:
    command = SucceedTask(task_id=TASK, attempt=1, summary="2 items", result={"items": [1, 2]})
    assert when([SUBMITTED, STARTED_1], command) == [
        TaskSucceeded(task_id=TASK, attempt=1, summary="2 items", result={"items": [1, 2]})
    ]


def test_an_inline_result_too_large_is_refused_on_the_command() -> None:
    from pydantic import ValidationError

    from schemas.tasks import MAX_INLINE_RESULT_BYTES

    with pytest.raises(ValidationError):
        SucceedTask(task_id=TASK, attempt=1, result="x" * MAX_INLINE_RESULT_BYTES)


def test_requeue_a_failed_task_grants_one_more_attempt() -> None:
    history = FINAL_HISTORIES["failed"]
    requeued = TaskRequeued(task_id=TASK, max_attempts=3, reason="fixed the input")
    assert when(history, RequeueTask(task_id=TASK, reason="fixed the input")) == [requeued]
    state = fold(task.evolve, None, [*history, requeued])
    assert state is not None and state.status == "queued" and state.attempts == 2 and state.max_attempts == 3
    # the next attempt is the third, and it may fail finally again
    started = TaskStarted(task_id=TASK, worker_id="w3", attempt=3)
    assert when([*history, requeued], StartTask(task_id=TASK, worker_id="w3", attempt=3)) == [started]
    assert when([*history, requeued, started], FailTask(task_id=TASK, attempt=3, error="again")) == [
        TaskFailed(task_id=TASK, attempt=3, error="again", retry_scheduled=False)
    ]


def test_requeue_stops_at_the_attempt_limit() -> None:
    from schemas.tasks import MAX_ATTEMPTS_LIMIT

    state = task.TaskState(
        task_id=TASK, project_id=PROJECT, kind="k", priority=5, max_attempts=MAX_ATTEMPTS_LIMIT,
        timeout_seconds=60, status="failed", attempts=MAX_ATTEMPTS_LIMIT,
    )  # fmt: skip
    with pytest.raises(IllegalTransition):
        task.decide(state, RequeueTask(task_id=TASK))


def test_requeue_of_an_unknown_task_is_not_found() -> None:
    with pytest.raises(NotFound):
        when([], RequeueTask(task_id=TASK))


def test_start_records_the_lease() -> None:
    lease = uuid.UUID("00000000-0000-0000-0000-0000000000d1")
    command = StartTask(task_id=TASK, worker_id="w1", attempt=1, lease_id=lease, lease_seconds=30)
    assert when([SUBMITTED], command) == [TaskStarted(task_id=TASK, worker_id="w1", attempt=1, lease_id=lease, lease_seconds=30)]
