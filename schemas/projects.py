"""Project events and commands, and the per-owner project-name reservation.

A project name is unique per owner among live (not archived) projects. The claim lives
in its own ``project_name`` stream; see ``commands.project_name`` for the protocol.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, ClassVar, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, StringConstraints, model_validator

from schemas.base import Command, DomainEvent
from schemas.envelope import NewEvent

ProjectRole: TypeAlias = Literal["owner", "editor", "viewer"]
PROJECT_ROLES: tuple[ProjectRole, ...] = ("owner", "editor", "viewer")

ProjectName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")
]
Description = Annotated[str, StringConstraints(strip_whitespace=True, max_length=2000)]


# -- project events -------------------------------------------------------------------


class ProjectCreated(DomainEvent):
    """The owner becomes the first member, with role ``owner``."""

    TYPE: ClassVar[str] = "project.created"

    project_id: uuid.UUID
    owner_id: uuid.UUID
    name: ProjectName
    description: Description = ""


class ProjectChanges(BaseModel):
    """The fields a ``project.updated`` changed; a field left out is unchanged."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: ProjectName | None = None
    description: Description | None = None


class ProjectUpdated(DomainEvent):
    """Version 2: the fields that changed, and only those, under ``changes``.

    Version 1 (``ProjectUpdatedV1``) carried ``name`` and ``description`` at the top level with
    ``null`` meaning "unchanged": a reader could not tell "unchanged" from a value, and each new
    updatable field would have widened the event itself. Stored v1 events are never rewritten;
    they are read through ``upcast_project_updated_v1``."""

    TYPE: ClassVar[str] = "project.updated"
    SCHEMA_VERSION: ClassVar[int] = 2

    project_id: uuid.UUID
    changes: ProjectChanges

    def to_new_event(self) -> NewEvent:
        # Only the fields that changed are written: a null never stands for "unchanged".
        return NewEvent(type=self.TYPE, schema_version=self.SCHEMA_VERSION, data=self.model_dump(mode="json", exclude_none=True))


class ProjectUpdatedV1(DomainEvent):
    """Version 1: the fields that changed are set; null means unchanged. Stored records of this
    version stay as they are; readers get version 2 through the registry's upcaster."""

    TYPE: ClassVar[str] = "project.updated"
    SCHEMA_VERSION: ClassVar[int] = 1

    project_id: uuid.UUID
    name: ProjectName | None = None
    description: Description | None = None


def upcast_project_updated_v1(data: dict[str, Any]) -> dict[str, Any]:
    """v1 -> v2: the non-null fields of v1 move under ``changes``."""
    return {
        "project_id": data["project_id"],
        "changes": {k: data[k] for k in ("name", "description") if data.get(k) is not None},
    }


class ProjectArchived(DomainEvent):
    TYPE: ClassVar[str] = "project.archived"

    project_id: uuid.UUID


class ProjectMemberAdded(DomainEvent):
    TYPE: ClassVar[str] = "project.member_added"

    project_id: uuid.UUID
    user_id: uuid.UUID
    role: ProjectRole


class ProjectMemberRoleChanged(DomainEvent):
    TYPE: ClassVar[str] = "project.member_role_changed"

    project_id: uuid.UUID
    user_id: uuid.UUID
    role: ProjectRole
    previous_role: ProjectRole


class ProjectMemberRemoved(DomainEvent):
    TYPE: ClassVar[str] = "project.member_removed"

    project_id: uuid.UUID
    user_id: uuid.UUID


ProjectEvent: TypeAlias = (
    ProjectCreated
    | ProjectUpdated
    | ProjectArchived
    | ProjectMemberAdded
    | ProjectMemberRoleChanged
    | ProjectMemberRemoved
)
PROJECT_EVENTS: tuple[type[DomainEvent], ...] = (
    ProjectCreated,
    ProjectUpdated,
    ProjectArchived,
    ProjectMemberAdded,
    ProjectMemberRoleChanged,
    ProjectMemberRemoved,
)
# Past versions of event types, for their JSON Schema; (type, version) -> its upcaster to the next.
PROJECT_HISTORIC_EVENTS: tuple[type[DomainEvent], ...] = (ProjectUpdatedV1,)
PROJECT_UPCASTERS = {("project.updated", 1): upcast_project_updated_v1}


# -- project commands -----------------------------------------------------------------


class CreateProject(Command):
    TYPE: ClassVar[str] = "project.create"

    project_id: uuid.UUID
    owner_id: uuid.UUID
    name: ProjectName
    description: Description = ""


class UpdateProject(Command):
    """A partial update: omitted fields stay as they are. At least one must be given."""

    TYPE: ClassVar[str] = "project.update"

    project_id: uuid.UUID
    name: ProjectName | None = None
    description: Description | None = None

    @model_validator(mode="after")
    def _something_to_update(self) -> UpdateProject:
        if self.name is None and self.description is None:
            raise ValueError("give a name, a description or both")
        return self


class ArchiveProject(Command):
    TYPE: ClassVar[str] = "project.archive"

    project_id: uuid.UUID


class AddProjectMember(Command):
    """Add a member, or change the role of an existing one."""

    TYPE: ClassVar[str] = "project.add_member"

    project_id: uuid.UUID
    user_id: uuid.UUID
    role: ProjectRole


class RemoveProjectMember(Command):
    TYPE: ClassVar[str] = "project.remove_member"

    project_id: uuid.UUID
    user_id: uuid.UUID


ProjectCommand: TypeAlias = CreateProject | UpdateProject | ArchiveProject | AddProjectMember | RemoveProjectMember
PROJECT_COMMANDS: tuple[type[Command], ...] = (
    CreateProject,
    UpdateProject,
    ArchiveProject,
    AddProjectMember,
    RemoveProjectMember,
)


# -- project-name reservation ---------------------------------------------------------


class ProjectNameReserved(DomainEvent):
    TYPE: ClassVar[str] = "project_name.reserved"

    owner_id: uuid.UUID
    name: ProjectName
    project_id: uuid.UUID


class ProjectNameReleased(DomainEvent):
    TYPE: ClassVar[str] = "project_name.released"

    owner_id: uuid.UUID
    name: ProjectName
    project_id: uuid.UUID


class ReserveProjectName(Command):
    TYPE: ClassVar[str] = "project_name.reserve"

    owner_id: uuid.UUID
    name: ProjectName
    project_id: uuid.UUID


class ReleaseProjectName(Command):
    """Release the claim held by ``project_id``; a no-op when that project holds none."""

    TYPE: ClassVar[str] = "project_name.release"

    owner_id: uuid.UUID
    name: ProjectName
    project_id: uuid.UUID


ProjectNameEvent: TypeAlias = ProjectNameReserved | ProjectNameReleased
ProjectNameCommand: TypeAlias = ReserveProjectName | ReleaseProjectName
PROJECT_NAME_EVENTS: tuple[type[DomainEvent], ...] = (ProjectNameReserved, ProjectNameReleased)
PROJECT_NAME_COMMANDS: tuple[type[Command], ...] = (ReserveProjectName, ReleaseProjectName)
