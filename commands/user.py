"""The user aggregate: stream ``user-<user_id>``.

Rules: a user registers once; a deactivated user accepts no further command; a
profile or role "change" to the current value decides no event.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from typing import TypeAlias

from commands.decider import Decider, InvalidHistory
from commands.errors import AlreadyExists, IllegalTransition, NotFound
from schemas.envelope import stream_name
from schemas.users import (
    ChangeUserRole,
    DeactivateUser,
    RegisterUser,
    UpdateUserProfile,
    UserCommand,
    UserDeactivated,
    UserEvent,
    UserProfileUpdated,
    UserRegistered,
    UserRole,
    UserRoleChanged,
)

CATEGORY = "user"


@dataclass(frozen=True, slots=True)
class UserState:
    user_id: uuid.UUID
    email: str
    display_name: str
    password_hash: str = field(repr=False)
    role: UserRole
    active: bool = True


State: TypeAlias = UserState | None


def stream_for(user_id: uuid.UUID) -> str:
    return stream_name(CATEGORY, user_id)


def decide(state: State, command: UserCommand) -> list[UserEvent]:
    if isinstance(command, RegisterUser):
        if state is not None:
            raise AlreadyExists(f"user {command.user_id} is already registered", user_id=str(command.user_id))
        return [
            UserRegistered(
                user_id=command.user_id,
                email=command.email,
                display_name=command.display_name,
                password_hash=command.password_hash,
                role=command.role,
            )
        ]
    if state is None:
        raise NotFound(f"user {command.user_id} does not exist", user_id=str(command.user_id))
    if not state.active:
        raise IllegalTransition(
            f"user {state.user_id} is deactivated", user_id=str(state.user_id), command=command.TYPE
        )
    match command:
        case UpdateUserProfile(display_name=display_name):
            if display_name == state.display_name:
                return []
            return [UserProfileUpdated(user_id=state.user_id, display_name=display_name)]
        case ChangeUserRole(role=role):
            if role == state.role:
                return []
            return [UserRoleChanged(user_id=state.user_id, role=role, previous_role=state.role)]
        case DeactivateUser(reason=reason):
            return [UserDeactivated(user_id=state.user_id, reason=reason)]
    raise TypeError(f"not a user command: {command!r}")


def evolve(state: State, event: UserEvent) -> State:
    if isinstance(event, UserRegistered):
        if state is not None:
            raise InvalidHistory(state, event)
        return UserState(
            user_id=event.user_id,
            email=event.email,
            display_name=event.display_name,
            password_hash=event.password_hash,
            role=event.role,
        )
    if state is None:
        raise InvalidHistory(state, event)
    match event:
        case UserProfileUpdated(display_name=display_name):
            return replace(state, display_name=display_name)
        case UserRoleChanged(role=role):
            return replace(state, role=role)
        case UserDeactivated():
            return replace(state, active=False)
    raise TypeError(f"not a user event: {event!r}")


DECIDER: Decider[State, UserCommand, UserEvent] = Decider(CATEGORY, None, decide, evolve)
