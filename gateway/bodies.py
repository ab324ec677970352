"""Request and response bodies of the HTTP API (pydantic; unknown fields are refused).

The OpenAPI document is generated from these models, so each field says exactly what is
checked: lengths are counted on the text as sent; surrounding whitespace is then stripped (a
normalisation, never a reason to refuse or to accept). The edge is stricter than the event
schemas in ``schemas`` (which the domain validates again): no control characters, line or
paragraph separators, bidi overrides or BOM in one-line fields such as emails and display
names; no NUL anywhere. Stricter only here, so events already stored still decode.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, WithJsonSchema, model_validator

from schemas.projects import ProjectRole
from schemas.tasks import MaxAttempts, Payload, Priority, TaskKind, TimeoutSeconds
from schemas.users import UserRole

# One-line text: C0 and C1 controls, DEL, U+2028/2029, bidi embeddings/overrides/isolates, BOM.
ONE_LINE_BANNED = r"\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff"
# Free text keeps tabs and line breaks.
FREE_TEXT_BANNED = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f"


def text(max_length: int, *, banned: str, required: bool) -> Any:
    """A string checked as sent, then stripped. ``required``: at least one visible character."""
    pattern = f"^[^{banned}]*[^\\s{banned}][^{banned}]*$" if required else f"^[^{banned}]*$"
    return Annotated[str, StringConstraints(max_length=max_length, pattern=pattern), AfterValidator(str.strip)]


_LOCAL, _LABEL = rf"[^@\s{ONE_LINE_BANNED}]", rf"[^@.\s{ONE_LINE_BANNED}]"
EMAIL_PATTERN = rf"^{_LOCAL}{{1,64}}@{_LABEL}+(?:\.{_LABEL}+)+$"
Email = Annotated[str, StringConstraints(max_length=254, pattern=EMAIL_PATTERN), AfterValidator(str.lower)]
DisplayName = text(100, banned=ONE_LINE_BANNED, required=True)
ProjectName = text(100, banned=ONE_LINE_BANNED, required=True)
Description = text(2000, banned=FREE_TEXT_BANNED, required=False)
Reason = text(500, banned=FREE_TEXT_BANNED, required=False)
Password = Annotated[str, StringConstraints(min_length=8, max_length=1024, pattern=r"^[^\x00]*$"), Field(repr=False)]


# Any JSON value that can be stored: what ``gateway.http.read_body`` lets through, as far as a
# JSON Schema can say it (depth and number range are in the request body's description).
_NO_NUL = {"pattern": "^[^\\x00]*$"}
JSON_VALUE_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "null"},
        {"type": "boolean"},
        {"type": "number"},
        {"type": "string", **_NO_NUL},
        {"type": "array", "items": {"$ref": "#/components/schemas/JsonValue"}},
        {"type": "object", "propertyNames": _NO_NUL, "additionalProperties": {"$ref": "#/components/schemas/JsonValue"}},
    ]
}
# pydantic refuses a $ref it did not make: the document generator turns this marker into one.
JSON_VALUE_REF = {"x-component": "JsonValue"}
EdgePayload = Annotated[
    Payload, WithJsonSchema({"type": "object", "propertyNames": _NO_NUL, "additionalProperties": JSON_VALUE_REF})
]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RegisterUserBody(Body):
    email: Email
    display_name: DisplayName
    password: Password
    role: UserRole = "member"


class TokenBody(Body):
    email: Email
    password: Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=r"^[^\x00]*$"), Field(repr=False)]


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
    """At least one field; a field left out is unchanged (``null`` is not a value)."""

    model_config = ConfigDict(json_schema_extra=lambda schema: _at_least_one_field(schema))

    name: ProjectName = None  # type: ignore[assignment]  # defaults are not validated: None = left out
    description: Description = None  # type: ignore[assignment]

    @model_validator(mode="after")
    def _something(self) -> UpdateProjectBody:
        if not self.model_fields_set:
            raise ValueError("give at least one of name, description")
        return self


def _at_least_one_field(schema: dict[str, Any]) -> None:
    schema["minProperties"] = 1
    for prop in schema["properties"].values():
        prop.pop("default", None)  # None stands for "left out", not a value to send


class PutMemberBody(Body):
    role: ProjectRole


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a boolean is not an integer")
    return value


class SubmitTaskBody(Body):
    kind: TaskKind
    payload: EdgePayload = Field(default_factory=dict)
    # A JSON true is not a number (pydantic's lax mode would take it as 1); 3.0 is the integer 3.
    priority: Annotated[Priority, BeforeValidator(_no_bool)] = 5
    max_attempts: Annotated[MaxAttempts, BeforeValidator(_no_bool)] = 3
    timeout_seconds: Annotated[TimeoutSeconds, BeforeValidator(_no_bool)] = 300


class Accepted(Body):
    """The answer to every successful write."""

    id: uuid.UUID
    stream: str
    version: int = Field(description="the stream's version after the write (also the ETag)")
    global_position: int | None = Field(description="position of the last event written; null when nothing changed")
    consistency_token: str = Field(description="read your writes: present it to a read (Consistency-Token header or ?consistency_token=)")


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

