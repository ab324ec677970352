"""User events and commands.

Passwords never enter this module in clear: commands and events carry an argon2id hash
made at the edge by ``commands.passwords``.
"""

from __future__ import annotations

import uuid
from typing import Annotated, ClassVar, Literal, TypeAlias

from pydantic import Field, StringConstraints

from schemas.base import Command, DomainEvent

UserRole: TypeAlias = Literal["admin", "member", "analyst"]
USER_ROLES: tuple[UserRole, ...] = ("admin", "member", "analyst")

# Deliberately simple: one "@", no whitespace, a dotted domain. Stored lower-cased.
EMAIL_PATTERN = r"^[^@\s]{1,64}@[^@\s.]+(?:\.[^@\s.]+)+$"
Email = Annotated[str, StringConstraints(strip_whitespace=True, to_lower=True, max_length=254, pattern=EMAIL_PATTERN)]
DisplayName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")
]
# Only an argon2id PHC string is accepted, so a clear password cannot slip into an event.
PasswordHash = Annotated[str, StringConstraints(max_length=512, pattern=r"^\$argon2id\$"), Field(repr=False)]
Reason = Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)]


# -- events ---------------------------------------------------------------------------


class UserRegistered(DomainEvent):
    TYPE: ClassVar[str] = "user.registered"
    PRIVATE_FIELDS: ClassVar[frozenset[str]] = frozenset({"password_hash"})

    user_id: uuid.UUID
    email: Email
    display_name: DisplayName
    password_hash: PasswordHash
    role: UserRole


class UserProfileUpdated(DomainEvent):
    TYPE: ClassVar[str] = "user.profile_updated"

    user_id: uuid.UUID
    display_name: DisplayName


class UserRoleChanged(DomainEvent):
    TYPE: ClassVar[str] = "user.role_changed"

    user_id: uuid.UUID
    role: UserRole
    previous_role: UserRole


class UserDeactivated(DomainEvent):
    TYPE: ClassVar[str] = "user.deactivated"

    user_id: uuid.UUID
    reason: Reason = ""


UserEvent: TypeAlias = UserRegistered | UserProfileUpdated | UserRoleChanged | UserDeactivated
USER_EVENTS: tuple[type[DomainEvent], ...] = (UserRegistered, UserProfileUpdated, UserRoleChanged, UserDeactivated)


# -- commands -------------------------------------------------------------------------


class RegisterUser(Command):
    """Register a user. ``role`` other than member is for trusted callers (admin, CLI)."""

    TYPE: ClassVar[str] = "user.register"

    user_id: uuid.UUID
    email: Email
    display_name: DisplayName
    password_hash: PasswordHash
    role: UserRole = "member"


class UpdateUserProfile(Command):
    TYPE: ClassVar[str] = "user.update_profile"

    user_id: uuid.UUID
    display_name: DisplayName


class ChangeUserRole(Command):
    TYPE: ClassVar[str] = "user.change_role"

    user_id: uuid.UUID
    role: UserRole


class DeactivateUser(Command):
    TYPE: ClassVar[str] = "user.deactivate"

    user_id: uuid.UUID
    reason: Reason = ""


UserCommand: TypeAlias = RegisterUser | UpdateUserProfile | ChangeUserRole | DeactivateUser
USER_COMMANDS: tuple[type[Command], ...] = (RegisterUser, UpdateUserProfile, ChangeUserRole, DeactivateUser)


# -- the email claim: one stream per normalised email, so emails are unique and a login can
#    find its user without a read model ------------------------------------------------


class UserEmailClaimed(DomainEvent):
    TYPE: ClassVar[str] = "user_email.claimed"

    email: Email
    user_id: uuid.UUID


class ClaimUserEmail(Command):
    TYPE: ClassVar[str] = "user_email.claim"

    email: Email
    user_id: uuid.UUID


USER_EMAIL_EVENTS: tuple[type[DomainEvent], ...] = (UserEmailClaimed,)
USER_EMAIL_COMMANDS: tuple[type[Command], ...] = (ClaimUserEmail,)
