"""Request and response bodies of the HTTP API (pydantic; unknown fields are refused).

Field types come from ``schemas`` so the API and the events validate alike; the OpenAPI
document is generated from these models.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from schemas.projects import Description, ProjectName, ProjectRole
from schemas.tasks import MaxAttempts, Payload, Priority, TaskKind, TimeoutSeconds
from schemas.users import DisplayName, Email, Reason, UserRole

Password = Annotated[str, StringConstraints(min_length=8, max_length=1024), Field(repr=False)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RegisterUserBody(Body):
    email: Email
    display_name: DisplayName
    password: Password
    role: UserRole = "member"


class TokenBody(Body):
    email: Email
    password: Annotated[str, StringConstraints(min_length=1, max_length=1024), Field(repr=False)]


class UpdateUserBody(Body):
    display_name: DisplayName


class ChangeRoleBody(Body):
    role: UserRole


class ReasonBody(Body):
    reason: Reason = ""


class CreateProjectBody(Body):
    name: ProjectName
    description: Description = ""


class UpdateProjectBody(Body):
    name: ProjectName | None = None
    description: Description | None = None

    @model_validator(mode="after")
    def _something(self) -> UpdateProjectBody:
        if self.name is None and self.description is None:
            raise ValueError("give at least one of name, description")
        return self


class PutMemberBody(Body):
    role: ProjectRole


class SubmitTaskBody(Body):
    kind: TaskKind
    payload: Payload = Field(default_factory=dict)
    priority: Priority = 5
    max_attempts: MaxAttempts = 3
    timeout_seconds: TimeoutSeconds = 300


class Accepted(Body):
    """The answer to every successful write."""

    id: uuid.UUID
    stream: str
    version: int = Field(description="the stream's version after the write (also the ETag)")
    global_position: int | None = Field(description="position of the last event written; null when nothing changed")


class TokenResponse(Body):
    access_token: str
    token_type: str = "Bearer"
    expires_in: int


class Problem(BaseModel):
    """RFC 9457 problem details."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str | None = None
    errors: list[dict[str, Any]] | None = None

