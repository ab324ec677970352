"""Who may do what: pure checks over aggregate state.

Roles come from the caller's token (``admin``, ``member``, ``analyst``) and from project
membership (``owner``, ``editor``, ``viewer``). A caller who may not see a project gets
NotFound (404), so its existence does not leak; one who may see it but not change it gets
Forbidden (403). Admins may do everything.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

from commands.errors import Forbidden, NotFound
from commands.project import ProjectState

Need = Literal["view", "edit", "manage"]
_RANK = {"viewer": 0, "editor": 1, "owner": 2}
_NEED = {"view": 0, "edit": 1, "manage": 2}


@dataclass(frozen=True, slots=True)
class Actor:
    user_id: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def uuid(self) -> uuid.UUID:
        try:
            return uuid.UUID(self.user_id)
        except ValueError:
            raise Forbidden("this token's subject is not a user id") from None


def project_access(project: ProjectState | None, actor: Actor, need: Need) -> ProjectState:
    if project is None:
        raise NotFound("no such project")
    if actor.is_admin:
        return project
    try:
        role = project.members.get(uuid.UUID(actor.user_id))
    except ValueError:
        role = None
    if role is None:
        raise NotFound("no such project")
    if _RANK[role] < _NEED[need]:
        raise Forbidden(f"a project {role} may not do this", project_role=role)
    return project


def self_or_admin(actor: Actor, user_id: uuid.UUID) -> None:
    if not actor.is_admin and actor.user_id != str(user_id):
        raise NotFound("no such user")


def admin_only(actor: Actor) -> None:
    if not actor.is_admin:
        raise Forbidden("only an admin may do this")


def may_create_projects(actor: Actor) -> None:
    if actor.role not in ("admin", "member"):
        raise Forbidden(f"a user with role {actor.role} may not create projects")
