"""The ``projects`` read model: name, description, owner, archived, members with their roles.

Task counts by status live in the same row but belong to the tasks projection (see
``projections.tasks.count_changes``): ``apply`` never touches them, and the upsert leaves them
alone, so either projection may create the row first.
"""

from __future__ import annotations

from projections.model import ReadModel, Row, UnknownEvent, first, require, stamped
from schemas.envelope import RecordedEvent

NAME = "projects"


def apply(row: Row | None, event: RecordedEvent) -> Row:
    data = event.data
    if event.type == "project.created":
        first(row, event)
        return stamped(
            {},
            event,
            project_id=data["project_id"],
            owner_id=data["owner_id"],
            name=data["name"],
            description=data.get("description", ""),
            archived=False,
            members={str(data["owner_id"]): "owner"},
            created_at=event.recorded_at,
            created_position=event.global_position,
        )
    row = require(row if row is None or row.get("version", 0) > 0 else None, event)
    if event.type == "project.updated":
        changes = {k: v for k, v in data["changes"].items() if k in ("name", "description") and v is not None}
        return stamped(row, event, **changes)
    if event.type == "project.archived":
        return stamped(row, event, archived=True)
    if event.type in ("project.member_added", "project.member_role_changed"):
        return stamped(row, event, members={**row["members"], str(data["user_id"]): data["role"]})
    if event.type == "project.member_removed":
        members = {user: role for user, role in row["members"].items() if user != str(data["user_id"])}
        return stamped(row, event, members=members)
    raise UnknownEvent(NAME, event)


MODEL = ReadModel(
    name=NAME,
    category="project",
    key="project_id",
    columns=("project_id", "owner_id", "name", "description", "archived", "members", "created_at", "updated_at",
             "created_position", "version", "global_position"),
    apply=apply,
)  # fmt: skip
