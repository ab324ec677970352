"""The projectors' pure ``apply``: given events, the row; and rows agree with the deciders' state."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings

from projections import projects, tasks, users, views
from projections.model import OutOfOrder, UnknownEvent
from schemas.envelope import RecordedEvent
from tests.unit.projection_testkit import (
    T0,
    fold_rows,
    project_history,
    recorded,
    task_history,
    user_history,
)


def test_a_task_row_records_each_transition_and_its_time() -> None:
    task_id, project_id = uuid.uuid4(), uuid.uuid4()
    stream = f"task-{task_id}"
    submitted = RecordedEvent(uuid.uuid4(), stream, "task.submitted", 1, 1, 10, T0,
                              {"task_id": str(task_id), "project_id": str(project_id), "kind": "echo", "payload": {"a": 1},
                               "priority": 5, "max_attempts": 2, "timeout_seconds": 30}, {})  # fmt: skip
    started = RecordedEvent(uuid.uuid4(), stream, "task.started", 1, 2, 11, T0, {"task_id": str(task_id), "worker_id": "w1", "attempt": 1}, {})
    failed = RecordedEvent(uuid.uuid4(), stream, "task.failed", 1, 3, 12, T0,
                           {"task_id": str(task_id), "attempt": 1, "error": "boom", "retry_scheduled": True}, {})  # fmt: skip
    row = tasks.apply(None, submitted)
    assert (row["status"], row["attempts"], row["version"], row["created_position"]) == ("queued", 0, 1, 10)
    row = tasks.apply(row, started)
    assert (row["status"], row["attempts"], row["worker_id"], row["started_at"]) == ("running", 1, "w1", T0)
    row = tasks.apply(row, failed)
    assert (row["status"], row["last_error"], row["retry_scheduled"], row["version"], row["global_position"]) == ("queued", "boom", True, 3, 12)
    view = views.task(row)
    assert view["id"] == str(task_id) and view["status"] == "queued" and view["payload"] == {"a": 1}


def test_apply_refuses_what_cannot_follow_the_row() -> None:
    stream = f"task-{uuid.uuid4()}"
    started = RecordedEvent(uuid.uuid4(), stream, "task.started", 1, 2, 2, T0, {"task_id": "x", "worker_id": "w", "attempt": 1}, {})
    with pytest.raises(OutOfOrder):
        tasks.apply(None, started)
    odd = RecordedEvent(uuid.uuid4(), stream, "task.teleported", 1, 1, 1, T0, {}, {})
    with pytest.raises(UnknownEvent):
        tasks.apply({"version": 1}, odd)


@settings(max_examples=20, deadline=None)
@given(user_history())
def test_users_never_hold_the_password_hash(history) -> None:  # noqa: ANN001
    rows = fold_rows(users.apply, recorded(f"user-{history.state.user_id}", history.history))
    (row,) = rows.values()
    assert "password_hash" not in row and "password_hash" not in views.user(row)


@settings(max_examples=80, deadline=None)
@given(task_history())
def test_a_task_row_agrees_with_the_deciders_state(history) -> None:  # noqa: ANN001
    state = history.state
    (row,) = fold_rows(tasks.apply, recorded(f"task-{state.task_id}", history.history)).values()
    assert row["status"] == state.status
    assert row["attempts"] == state.attempts
    assert row["worker_id"] == state.worker_id
    assert (row["kind"], row["priority"], row["max_attempts"]) == (state.kind, state.priority, state.max_attempts)
    if state.status == "succeeded":
        assert row["result"] == history.history[-1].result
    assert row["version"] == len(history.history)


@settings(max_examples=80, deadline=None)
@given(project_history())
def test_a_project_row_agrees_with_the_deciders_state(history) -> None:  # noqa: ANN001
    state = history.state
    (row,) = fold_rows(projects.apply, recorded(f"project-{state.project_id}", history.history)).values()
    assert (row["name"], row["description"], row["archived"]) == (state.name, state.description, state.archived)
    assert row["members"] == {str(u): r for u, r in state.members.items()}
    assert row["owner_id"] == str(state.owner_id)


@settings(max_examples=80, deadline=None)
@given(user_history())
def test_a_user_row_agrees_with_the_deciders_state(history) -> None:  # noqa: ANN001
    state = history.state
    (row,) = fold_rows(users.apply, recorded(f"user-{state.user_id}", history.history)).values()
    assert (row["email"], row["display_name"], row["role"], row["active"]) == (state.email, state.display_name, state.role, state.active)


