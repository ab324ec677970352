"""The email claim: stream ``user_email-<uuid5(normalised email)>`` holds the one user owning it.

Registering appends the claim and ``UserRegistered`` in one atomic multi-stream append, so an
email is never held by two users and never held by a user that does not exist. A login reads
the claim to find the user, so no read model stands in the way of authentication.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TypeAlias

from commands.decider import Decider, InvalidHistory
from commands.errors import AlreadyExists
from schemas.envelope import stream_name
from schemas.users import ClaimUserEmail, UserEmailClaimed

CATEGORY = "user_email"
# uuid5(NAMESPACE_URL, "taskstream:user_email"). Fixed forever: a change orphans every claim.
NAMESPACE = uuid.UUID("5b0b8f47-5ac1-5a43-a9f4-0d3f1e0e8c11")


@dataclass(frozen=True, slots=True)
class EmailClaim:
    email: str
    user_id: uuid.UUID


State: TypeAlias = EmailClaim | None


def normalise(email: str) -> str:
    return email.strip().casefold()


def stream_for(email: str) -> str:
    return stream_name(CATEGORY, uuid.uuid5(NAMESPACE, normalise(email)))


def decide(state: State, command: ClaimUserEmail) -> list[UserEmailClaimed]:
    if state is None:
        return [UserEmailClaimed(email=command.email, user_id=command.user_id)]
    if state.user_id == command.user_id:
        return []
    raise AlreadyExists("a user with this email is already registered", field="email")


def evolve(state: State, event: UserEmailClaimed) -> State:
    if state is not None:
        raise InvalidHistory(state, event)
    return EmailClaim(email=event.email, user_id=event.user_id)


DECIDER: Decider[State, ClaimUserEmail, UserEmailClaimed] = Decider(CATEGORY, None, decide, evolve)
