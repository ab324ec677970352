"""Valid histories for the projection tests, made by the deciders themselves."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from commands import project, task, user
from schemas.base import DomainEvent
from schemas.envelope import RecordedEvent
from schemas.projects import AddProjectMember, ArchiveProject, CreateProject, RemoveProjectMember, UpdateProject
from schemas.tasks import CancelTask, FailTask, RequeueTask, StartTask, SubmitTask, SucceedTask
from schemas.users import ChangeUserRole, DeactivateUser, RegisterUser, UpdateUserProfile
from tests.unit.domain_testkit import Aggregate

T0 = datetime(2026, 1, 1, tzinfo=UTC)
short_text = st.text(st.characters(min_codepoint=48, max_codepoint=122), min_size=1, max_size=12)


@st.composite
def task_history(draw: st.DrawFn, project_id: uuid.UUID | None = None) -> Aggregate:
    agg = Aggregate(task.DECIDER)
    task_id = uuid.uuid4()
    project_id = project_id or uuid.uuid4()
    agg.run(SubmitTask(task_id=task_id, project_id=project_id, kind=draw(st.sampled_from(["echo", "sleep"])),
                       payload={"n": draw(st.integers(0, 9))}, max_attempts=draw(st.integers(1, 3))))  # fmt: skip
    for step in draw(st.lists(st.sampled_from(["start", "succeed", "fail", "fail_final", "cancel", "requeue"]), max_size=8)):
        state = agg.state
        n = state.attempts
        command = {
            "start": lambda: StartTask(task_id=task_id, worker_id=f"w{n}", attempt=n + 1),
            "succeed": lambda: SucceedTask(task_id=task_id, attempt=max(n, 1), result_ref="r", summary="ok", result={"n": n}),
            "fail": lambda: FailTask(task_id=task_id, attempt=max(n, 1), error="boom"),
            "fail_final": lambda: FailTask(task_id=task_id, attempt=max(n, 1), error="fatal", retryable=False),
            "cancel": lambda: CancelTask(task_id=task_id, reason="stop"),
            "requeue": lambda: RequeueTask(task_id=task_id, reason="again"),
        }[step]()
        agg.run(command)  # refused commands leave the history as it is
    return agg


@st.composite
def project_history(draw: st.DrawFn) -> Aggregate:
    agg = Aggregate(project.DECIDER)
    project_id, owner = uuid.uuid4(), uuid.uuid4()
    people = [owner, uuid.uuid4(), uuid.uuid4()]
    agg.run(CreateProject(project_id=project_id, owner_id=owner, name=draw(short_text)))
    for step in draw(st.lists(st.sampled_from(["rename", "describe", "add", "remove", "archive"]), max_size=8)):
        who = draw(st.sampled_from(people))
        command = {
            "rename": lambda: UpdateProject(project_id=project_id, name=draw(short_text)),
            "describe": lambda: UpdateProject(project_id=project_id, description=draw(short_text)),
            "add": lambda: AddProjectMember(project_id=project_id, user_id=who, role=draw(st.sampled_from(["owner", "editor", "viewer"]))),
            "remove": lambda: RemoveProjectMember(project_id=project_id, user_id=who),
            "archive": lambda: ArchiveProject(project_id=project_id),
        }[step]()
        agg.run(command)
    return agg


@st.composite
def user_history(draw: st.DrawFn) -> Aggregate:
    agg = Aggregate(user.DECIDER)
    user_id = uuid.uuid4()
    agg.run(RegisterUser(user_id=user_id, email=f"u{user_id.hex[:8]}@example.org", display_name=draw(short_text),
                         password_hash="$argon2id$x", role=draw(st.sampled_from(["member", "admin", "analyst"]))))  # fmt: skip
    for step in draw(st.lists(st.sampled_from(["rename", "role", "deactivate"]), max_size=5)):
        command = {
            "rename": lambda: UpdateUserProfile(user_id=user_id, display_name=draw(short_text)),
            "role": lambda: ChangeUserRole(user_id=user_id, role=draw(st.sampled_from(["member", "admin", "analyst"]))),
            "deactivate": lambda: DeactivateUser(user_id=user_id, reason="bye"),
        }[step]()
        agg.run(command)
    return agg


def recorded(stream: str, events: Sequence[DomainEvent], positions: Sequence[int] | None = None) -> list[RecordedEvent]:
    """The events as the store would record them (versions from 1; positions increasing)."""
    positions = positions or list(range(1, len(events) + 1))
    out = []
    for version, (event, position) in enumerate(zip(events, positions, strict=True), start=1):
        new = event.to_new_event()
        out.append(RecordedEvent(new.id, stream, new.type, new.schema_version, version, position,
                                 T0 + timedelta(seconds=position), new.data, {}))  # fmt: skip
    return out


def interleave(histories: dict[str, list[DomainEvent]], order: Sequence[int]) -> list[RecordedEvent]:
    """One global order of several streams' events (per-stream order kept), positions from 1."""
    queues = {s: list(e) for s, e in histories.items()}
    streams = list(queues)
    counter = itertools.count(1)
    by_stream: dict[str, list[tuple[DomainEvent, int]]] = {s: [] for s in streams}
    choices = iter(order)
    while any(queues.values()):
        live = [s for s in streams if queues[s]]
        s = live[next(choices, 0) % len(live)]
        by_stream[s].append((queues[s].pop(0), next(counter)))
    out: list[RecordedEvent] = []
    for s, pairs in by_stream.items():
        out += recorded(s, [e for e, _ in pairs], [p for _, p in pairs])
    return sorted(out, key=lambda e: e.global_position)


def fold_rows(apply: Any, events: Sequence[RecordedEvent]) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for event in events:
        rows[event.stream] = apply(rows.get(event.stream), event)
    return rows
