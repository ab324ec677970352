"""The ``users`` read model: profile, email, role, active. Never the password hash."""

from __future__ import annotations

from projections.model import ReadModel, Row, UnknownEvent, first, require, stamped
from schemas.envelope import RecordedEvent

NAME = "users"


def apply(row: Row | None, event: RecordedEvent) -> Row:
    data = event.data
    if event.type == "user.registered":
        first(row, event)
        return stamped(
            {},
            event,
            user_id=data["user_id"],
            email=data["email"],
            display_name=data["display_name"],
            role=data["role"],
            active=True,
            created_at=event.recorded_at,
            created_position=event.global_position,
        )
    row = require(row, event)
    if event.type == "user.profile_updated":
        return stamped(row, event, display_name=data["display_name"])
    if event.type == "user.role_changed":
        return stamped(row, event, role=data["role"])
    if event.type == "user.deactivated":
        return stamped(row, event, active=False)
    raise UnknownEvent(NAME, event)


MODEL = ReadModel(
    name=NAME,
    category="user",
    key="user_id",
    columns=("user_id", "email", "display_name", "role", "active", "created_at", "updated_at",
             "created_position", "version", "global_position"),
    apply=apply,
)  # fmt: skip
