"""Every event type survives the trip through the store: encode, store as JSON, decode."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import projects as p
from schemas import tasks as t
from schemas import users as u
from schemas.base import DomainEvent
from schemas.catalog import EVENTS
from tests.unit.domain_testkit import (
    attempts,
    emails,
    free_text,
    names,
    password_hashes,
    payloads,
    task_kinds,
    through_store,
)

ids = st.uuids()
project_roles = st.sampled_from(p.PROJECT_ROLES)
user_roles = st.sampled_from(u.USER_ROLES)

STRATEGIES: dict[type[DomainEvent], st.SearchStrategy[Any]] = {
    u.UserRegistered: st.builds(
        u.UserRegistered,
        user_id=ids,
        email=emails,
        display_name=names,
        password_hash=password_hashes,
        role=user_roles,
    ),
    u.UserProfileUpdated: st.builds(u.UserProfileUpdated, user_id=ids, display_name=names),
    u.UserRoleChanged: st.builds(u.UserRoleChanged, user_id=ids, role=user_roles, previous_role=user_roles),
    u.UserDeactivated: st.builds(u.UserDeactivated, user_id=ids, reason=free_text),
    u.UserEmailClaimed: st.builds(u.UserEmailClaimed, email=emails, user_id=ids),
    p.ProjectCreated: st.builds(p.ProjectCreated, project_id=ids, owner_id=ids, name=names, description=free_text),
    p.ProjectUpdated: st.builds(
        p.ProjectUpdated, project_id=ids,
        changes=st.builds(p.ProjectChanges, name=st.none() | names, description=st.none() | free_text),
    ),
    p.ProjectArchived: st.builds(p.ProjectArchived, project_id=ids),
    p.ProjectMemberAdded: st.builds(p.ProjectMemberAdded, project_id=ids, user_id=ids, role=project_roles),
    p.ProjectMemberRoleChanged: st.builds(
        p.ProjectMemberRoleChanged, project_id=ids, user_id=ids, role=project_roles, previous_role=project_roles
    ),
    p.ProjectMemberRemoved: st.builds(p.ProjectMemberRemoved, project_id=ids, user_id=ids),
    p.ProjectNameReserved: st.builds(p.ProjectNameReserved, owner_id=ids, name=names, project_id=ids),
    p.ProjectNameReleased: st.builds(p.ProjectNameReleased, owner_id=ids, name=names, project_id=ids),
    t.TaskSubmitted: st.builds(
        t.TaskSubmitted,
        task_id=ids,
        project_id=ids,
        kind=task_kinds,
        payload=payloads,
        priority=st.integers(0, 9),
        max_attempts=attempts,
        timeout_seconds=st.integers(1, 86_400),
    ),
    t.TaskStarted: st.builds(
        t.TaskStarted, task_id=ids, worker_id=names.map(str.strip), attempt=attempts, lease_id=st.none() | ids,
        lease_seconds=st.none() | st.floats(0.5, 3600),
    ),  # fmt: skip
    t.TaskSucceeded: st.builds(
        t.TaskSucceeded, task_id=ids, attempt=attempts, result_ref=st.none() | names, summary=free_text,
        result=st.none() | payloads,
    ),
    t.TaskFailed: st.builds(
        t.TaskFailed, task_id=ids, attempt=attempts, error=names, retry_scheduled=st.booleans()
    ),
    t.TaskCancelled: st.builds(t.TaskCancelled, task_id=ids, reason=free_text),
    t.TaskRequeued: st.builds(t.TaskRequeued, task_id=ids, max_attempts=attempts, reason=free_text),
}


def test_every_event_type_has_a_strategy() -> None:
    assert set(STRATEGIES) == set(EVENTS)


@pytest.mark.parametrize("event_cls", EVENTS, ids=lambda cls: cls.TYPE)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_event_round_trips_through_the_store(event_cls: type[DomainEvent], data: st.DataObject) -> None:
    event = data.draw(STRATEGIES[event_cls])
    [decoded] = through_store([event])
    assert type(decoded) is event_cls
    assert decoded == event
    assert decoded.model_dump(mode="json") == event.model_dump(mode="json")
