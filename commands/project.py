"""The project aggregate: stream ``project-<project_id>``.

Rules: a project is created once, its creator as the first owner. An archived project
accepts no further command. A project always keeps at least one owner: removing or
demoting the last owner is refused. Changes to the current values decide no event.
Name uniqueness per owner is kept by ``commands.project_name``, not here.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import TypeAlias

from commands.decider import Decider, InvalidHistory
from commands.errors import AlreadyExists, IllegalTransition, LastOwner, NotFound
from schemas.envelope import stream_name
from schemas.projects import (
    AddProjectMember,
    ArchiveProject,
    CreateProject,
    ProjectArchived,
    ProjectCommand,
    ProjectCreated,
    ProjectEvent,
    ProjectMemberAdded,
    ProjectMemberRemoved,
    ProjectMemberRoleChanged,
    ProjectRole,
    ProjectChanges,
    ProjectUpdated,
    RemoveProjectMember,
    UpdateProject,
)

CATEGORY = "project"


@dataclass(frozen=True, slots=True)
class ProjectState:
    """``owner_id`` is the creator, whose namespace holds the name; ``members`` includes owners."""

    project_id: uuid.UUID
    owner_id: uuid.UUID
    name: str
    description: str
    members: Mapping[uuid.UUID, ProjectRole]
    archived: bool = False

    @property
    def owners(self) -> frozenset[uuid.UUID]:
        return frozenset(user for user, role in self.members.items() if role == "owner")


State: TypeAlias = ProjectState | None


def stream_for(project_id: uuid.UUID) -> str:
    return stream_name(CATEGORY, project_id)


def decide(state: State, command: ProjectCommand) -> list[ProjectEvent]:
    if isinstance(command, CreateProject):
        if state is not None:
            raise AlreadyExists(f"project {command.project_id} already exists", project_id=str(command.project_id))
        return [
            ProjectCreated(
                project_id=command.project_id,
                owner_id=command.owner_id,
                name=command.name,
                description=command.description,
            )
        ]
    if state is None:
        raise NotFound(f"project {command.project_id} does not exist", project_id=str(command.project_id))
    if state.archived:
        raise IllegalTransition(
            f"project {state.project_id} is archived", project_id=str(state.project_id), command=command.TYPE
        )
    match command:
        case UpdateProject():
            return _update(state, command)
        case ArchiveProject():
            return [ProjectArchived(project_id=state.project_id)]
        case AddProjectMember():
            return _add_member(state, command)
        case RemoveProjectMember(user_id=user_id):
            if user_id not in state.members:
                raise NotFound(
                    f"user {user_id} is not a member of project {state.project_id}",
                    project_id=str(state.project_id),
                    user_id=str(user_id),
                )
            _refuse_losing_last_owner(state, user_id)
            return [ProjectMemberRemoved(project_id=state.project_id, user_id=user_id)]
    raise TypeError(f"not a project command: {command!r}")


def _update(state: ProjectState, command: UpdateProject) -> list[ProjectEvent]:
    name = command.name if command.name is not None and command.name != state.name else None
    description = (
        command.description
        if command.description is not None and command.description != state.description
        else None
    )
    if name is None and description is None:
        return []
    return [ProjectUpdated(project_id=state.project_id, changes=ProjectChanges(name=name, description=description))]


def _add_member(state: ProjectState, command: AddProjectMember) -> list[ProjectEvent]:
    current = state.members.get(command.user_id)
    if current is None:
        return [ProjectMemberAdded(project_id=state.project_id, user_id=command.user_id, role=command.role)]
    if current == command.role:
        return []
    if current == "owner":
        _refuse_losing_last_owner(state, command.user_id)
    return [
        ProjectMemberRoleChanged(
            project_id=state.project_id, user_id=command.user_id, role=command.role, previous_role=current
        )
    ]


def _refuse_losing_last_owner(state: ProjectState, user_id: uuid.UUID) -> None:
    if state.owners == {user_id}:
        raise LastOwner(
            f"user {user_id} is the last owner of project {state.project_id}",
            project_id=str(state.project_id),
            user_id=str(user_id),
        )


def _with_members(state: ProjectState, members: dict[uuid.UUID, ProjectRole]) -> ProjectState:
    return replace(state, members=MappingProxyType(members))


def evolve(state: State, event: ProjectEvent) -> State:
    if isinstance(event, ProjectCreated):
        if state is not None:
            raise InvalidHistory(state, event)
        return ProjectState(
            project_id=event.project_id,
            owner_id=event.owner_id,
            name=event.name,
            description=event.description,
            members=MappingProxyType({event.owner_id: "owner"}),
        )
    if state is None:
        raise InvalidHistory(state, event)
    match event:
        case ProjectUpdated(changes=changes):
            return replace(
                state,
                name=state.name if changes.name is None else changes.name,
                description=state.description if changes.description is None else changes.description,
            )
        case ProjectArchived():
            return replace(state, archived=True)
        case ProjectMemberAdded(user_id=user_id, role=role) | ProjectMemberRoleChanged(user_id=user_id, role=role):
            return _with_members(state, {**state.members, user_id: role})
        case ProjectMemberRemoved(user_id=user_id):
            return _with_members(state, {u: r for u, r in state.members.items() if u != user_id})
    raise TypeError(f"not a project event: {event!r}")


DECIDER: Decider[State, ProjectCommand, ProjectEvent] = Decider(CATEGORY, None, decide, evolve)
