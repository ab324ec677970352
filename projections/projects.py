"""The ``projects`` read model: name, description, owner, archived, members with their roles.

Task counts by status live in the same row but belong to the tasks projection (its upsert
moves them, ``projections.runtime.Projector``): ``apply`` never touches them, and the upsert leaves them
alone, so either projection may create the row first (a row at version 0 is one the tasks
projection made: for this projector, no row yet).
"""

from __future__ import annotations

from typing import Any

from projections.model import ReadModel, Row, Steps
from schemas.envelope import RecordedEvent

NAME = "projects"


def _created(row: Row, data: Any, at: Any, position: int) -> Row:
    return {"project_id": data["project_id"], "owner_id": data["owner_id"], "name": data["name"],
            "description": data.get("description", ""), "archived": False, "members": {str(data["owner_id"]): "owner"},
            "created_at": at, "created_position": position}  # fmt: skip


def _updated(row: Row, data: Any, at: Any, position: int) -> Row:
    return {k: v for k, v in data["changes"].items() if k in ("name", "description") and v is not None}


def _archived(row: Row, data: Any, at: Any, position: int) -> Row:
    return {"archived": True}


def _member_set(row: Row, data: Any, at: Any, position: int) -> Row:
    return {"members": {**row["members"], str(data["user_id"]): data["role"]}}


def _member_removed(row: Row, data: Any, at: Any, position: int) -> Row:
    gone = str(data["user_id"])
    return {"members": {user: role for user, role in row["members"].items() if user != gone}}


STEPS = Steps(
    NAME,
    first="project.created",
    steps={
        "project.created": _created,
        "project.updated": _updated,
        "project.archived": _archived,
        "project.member_added": _member_set,
        "project.member_role_changed": _member_set,
        "project.member_removed": _member_removed,
    },
    zero_is_none=True,
)


def apply(row: Row | None, event: RecordedEvent) -> Row:
    return STEPS.apply(row, event)


MODEL = ReadModel(
    name=NAME,
    category="project",
    key="project_id",
    columns=("project_id", "owner_id", "name", "description", "archived", "members", "created_at", "updated_at",
             "created_position", "version", "global_position"),
    apply=apply,
    steps=STEPS,
)  # fmt: skip
