"""The ``users`` read model: profile, email, role, active. Never the password hash."""

from __future__ import annotations

from typing import Any

from projections.model import ReadModel, Row, Steps
from schemas.envelope import RecordedEvent

NAME = "users"


def _registered(row: Row, data: Any, at: Any, position: int) -> Row:
    return {"user_id": data["user_id"], "email": data["email"], "display_name": data["display_name"], "role": data["role"],
            "active": True, "created_at": at, "created_position": position}  # fmt: skip


def _profile_updated(row: Row, data: Any, at: Any, position: int) -> Row:
    return {"display_name": data["display_name"]}


def _role_changed(row: Row, data: Any, at: Any, position: int) -> Row:
    return {"role": data["role"]}


def _deactivated(row: Row, data: Any, at: Any, position: int) -> Row:
    return {"active": False}


STEPS = Steps(
    NAME,
    first="user.registered",
    steps={
        "user.registered": _registered,
        "user.profile_updated": _profile_updated,
        "user.role_changed": _role_changed,
        "user.deactivated": _deactivated,
    },
)


def apply(row: Row | None, event: RecordedEvent) -> Row:
    return STEPS.apply(row, event)


MODEL = ReadModel(
    name=NAME,
    category="user",
    key="user_id",
    columns=("user_id", "email", "display_name", "role", "active", "created_at", "updated_at",
             "created_position", "version", "global_position"),
    apply=apply,
    steps=STEPS,
)  # fmt: skip
