"""Project decider: given events, when a command, then events (or a domain error)."""

from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError

from commands import project
from commands.decider import InvalidHistory, fold
from commands.errors import AlreadyExists, IllegalTransition, LastOwner, NotFound
from schemas.projects import (
    AddProjectMember,
    ArchiveProject,
    CreateProject,
    ProjectArchived,
    ProjectChanges,
    ProjectCreated,
    ProjectMemberAdded,
    ProjectMemberRemoved,
    ProjectMemberRoleChanged,
    ProjectUpdated,
    RemoveProjectMember,
    UpdateProject,
)

PROJECT = uuid.UUID("00000000-0000-0000-0000-0000000000b1")
OWNER = uuid.UUID("00000000-0000-0000-0000-0000000000a1")
BOB = uuid.UUID("00000000-0000-0000-0000-0000000000a2")
CREATED = ProjectCreated(project_id=PROJECT, owner_id=OWNER, name="Apollo", description="moon")
BOB_EDITS = ProjectMemberAdded(project_id=PROJECT, user_id=BOB, role="editor")
BOB_OWNS = ProjectMemberAdded(project_id=PROJECT, user_id=BOB, role="owner")


def when(given: list[object], command: object) -> list[object]:
    return list(project.decide(fold(project.evolve, None, given), command))  # type: ignore[arg-type]


def test_create_project() -> None:
    command = CreateProject(project_id=PROJECT, owner_id=OWNER, name=" Apollo ", description="moon")
    assert when([], command) == [CREATED]


def test_the_creator_is_the_first_owner() -> None:
    state = fold(project.evolve, None, [CREATED])
    assert state is not None
    assert dict(state.members) == {OWNER: "owner"} and state.owners == {OWNER}


def test_create_twice_is_refused() -> None:
    with pytest.raises(AlreadyExists):
        when([CREATED], CreateProject(project_id=PROJECT, owner_id=BOB, name="Other"))


def test_update_emits_only_what_changed() -> None:
    command = UpdateProject(project_id=PROJECT, name="Apollo", description="mars")
    assert when([CREATED], command) == [ProjectUpdated(project_id=PROJECT, changes=ProjectChanges(description="mars"))]


def test_update_name() -> None:
    assert when([CREATED], UpdateProject(project_id=PROJECT, name="Artemis")) == [
        ProjectUpdated(project_id=PROJECT, changes=ProjectChanges(name="Artemis"))
    ]


def test_update_with_the_current_values_decides_nothing() -> None:
    assert when([CREATED], UpdateProject(project_id=PROJECT, name="Apollo", description="moon")) == []


def test_update_needs_at_least_one_field() -> None:
    with pytest.raises(ValidationError):
        UpdateProject(project_id=PROJECT)


def test_archive() -> None:
    assert when([CREATED], ArchiveProject(project_id=PROJECT)) == [ProjectArchived(project_id=PROJECT)]


def test_add_member() -> None:
    assert when([CREATED], AddProjectMember(project_id=PROJECT, user_id=BOB, role="editor")) == [BOB_EDITS]


def test_adding_an_existing_member_with_another_role_changes_the_role() -> None:
    assert when([CREATED, BOB_EDITS], AddProjectMember(project_id=PROJECT, user_id=BOB, role="viewer")) == [
        ProjectMemberRoleChanged(project_id=PROJECT, user_id=BOB, role="viewer", previous_role="editor")
    ]


def test_adding_an_existing_member_with_the_same_role_decides_nothing() -> None:
    assert when([CREATED, BOB_EDITS], AddProjectMember(project_id=PROJECT, user_id=BOB, role="editor")) == []


def test_an_owner_may_step_down_while_another_owner_remains() -> None:
    assert when([CREATED, BOB_OWNS], AddProjectMember(project_id=PROJECT, user_id=OWNER, role="viewer")) == [
        ProjectMemberRoleChanged(project_id=PROJECT, user_id=OWNER, role="viewer", previous_role="owner")
    ]


def test_the_last_owner_cannot_be_demoted() -> None:
    with pytest.raises(LastOwner) as caught:
        when([CREATED, BOB_EDITS], AddProjectMember(project_id=PROJECT, user_id=OWNER, role="editor"))
    assert caught.value.status == 409 and caught.value.slug == "last-owner"


def test_remove_member() -> None:
    assert when([CREATED, BOB_EDITS], RemoveProjectMember(project_id=PROJECT, user_id=BOB)) == [
        ProjectMemberRemoved(project_id=PROJECT, user_id=BOB)
    ]


def test_an_owner_can_be_removed_while_another_owner_remains() -> None:
    assert when([CREATED, BOB_OWNS], RemoveProjectMember(project_id=PROJECT, user_id=OWNER)) == [
        ProjectMemberRemoved(project_id=PROJECT, user_id=OWNER)
    ]


def test_the_last_owner_cannot_be_removed() -> None:
    with pytest.raises(LastOwner):
        when([CREATED, BOB_EDITS], RemoveProjectMember(project_id=PROJECT, user_id=OWNER))


def test_removing_a_non_member_is_not_found() -> None:
    with pytest.raises(NotFound):
        when([CREATED], RemoveProjectMember(project_id=PROJECT, user_id=BOB))


COMMANDS_ON_EXISTING = [
    UpdateProject(project_id=PROJECT, name="X"),
    ArchiveProject(project_id=PROJECT),
    AddProjectMember(project_id=PROJECT, user_id=BOB, role="viewer"),
    RemoveProjectMember(project_id=PROJECT, user_id=OWNER),
]


@pytest.mark.parametrize("command", COMMANDS_ON_EXISTING, ids=lambda c: c.TYPE)
def test_commands_on_an_unknown_project_are_not_found(command: object) -> None:
    with pytest.raises(NotFound):
        when([], command)


@pytest.mark.parametrize("command", COMMANDS_ON_EXISTING, ids=lambda c: c.TYPE)
def test_an_archived_project_accepts_no_change(command: object) -> None:
    with pytest.raises(IllegalTransition):
        when([CREATED, BOB_OWNS, ProjectArchived(project_id=PROJECT)], command)


def test_evolve_builds_the_state_from_history() -> None:
    state = fold(
        project.evolve,
        None,
        [
            CREATED,
            BOB_EDITS,
            ProjectMemberRoleChanged(project_id=PROJECT, user_id=BOB, role="owner", previous_role="editor"),
            ProjectMemberRemoved(project_id=PROJECT, user_id=OWNER),
            ProjectUpdated(project_id=PROJECT, changes=ProjectChanges(name="Artemis")),
            ProjectArchived(project_id=PROJECT),
        ],
    )
    assert state == project.ProjectState(
        project_id=PROJECT, owner_id=OWNER, name="Artemis", description="moon", members={BOB: "owner"}, archived=True
    )


def test_evolve_refuses_events_before_creation() -> None:
    with pytest.raises(InvalidHistory):
        fold(project.evolve, None, [BOB_EDITS])
