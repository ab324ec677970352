"""Field validation of the events and commands."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.projects import CreateProject, ProjectCreated
from schemas.tasks import MAX_PAYLOAD_BYTES, StartTask, SubmitTask, TaskSubmitted
from schemas.users import RegisterUser, UserRegistered

ID = uuid.UUID("00000000-0000-0000-0000-000000000001")
HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"


def register(**overrides: Any) -> RegisterUser:
    fields: dict[str, Any] = {"user_id": ID, "email": "ada@example.org", "display_name": "Ada", "password_hash": HASH}
    return RegisterUser(**{**fields, **overrides})


def submit(**overrides: Any) -> SubmitTask:
    return SubmitTask(**{"task_id": ID, "project_id": ID, "kind": "report.render", **overrides})


def test_email_is_trimmed_and_lower_cased() -> None:
    assert register(email="  Ada@Example.ORG ").email == "ada@example.org"


BAD_EMAILS = [
    "ada",
    "ada@example",
    "ada@@example.org",
    "a da@example.org",
    "@example.org",
    "ada@.org",
    "ada@org.",
    "x" * 65 + "@example.org",
    "a@" + "b" * 250 + ".org",
]


@pytest.mark.parametrize("email", BAD_EMAILS)
def test_malformed_emails_are_refused(email: str) -> None:
    with pytest.raises(ValidationError) as caught:
        register(email=email)
    assert [e["loc"] for e in caught.value.errors()] == [("email",)]


@pytest.mark.parametrize("password_hash", ["hunter2hunter2", "$argon2i$v=19$m=16,t=2,p=1$c2FsdA$aGFzaA", ""])
def test_only_an_argon2id_hash_is_accepted_as_password_hash(password_hash: str) -> None:
    with pytest.raises(ValidationError):
        register(password_hash=password_hash)
    with pytest.raises(ValidationError):
        UserRegistered(user_id=ID, email="a@b.io", display_name="A", password_hash=password_hash, role="member")


def test_the_password_hash_is_kept_out_of_repr() -> None:
    assert HASH not in repr(register())


@pytest.mark.parametrize("name", ["", "   ", "x" * 101, "tab\there"])
def test_display_names_must_be_short_printable_and_not_blank(name: str) -> None:
    with pytest.raises(ValidationError):
        register(display_name=name)


def test_roles_are_an_enumeration() -> None:
    with pytest.raises(ValidationError):
        register(role="root")


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        register(password="hunter2hunter2")
    assert caught.value.errors()[0]["type"] == "extra_forbidden"


def test_models_are_frozen() -> None:
    event = ProjectCreated(project_id=ID, owner_id=ID, name="Apollo")
    with pytest.raises(ValidationError):
        event.name = "Other"  # type: ignore[misc]


def test_project_names_are_trimmed() -> None:
    assert CreateProject(project_id=ID, owner_id=ID, name="  Apollo ").name == "Apollo"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("priority", -1),
        ("priority", 10),
        ("max_attempts", 0),
        ("max_attempts", 21),
        ("timeout_seconds", 0),
        ("timeout_seconds", 86_401),
        ("kind", "Report"),
        ("kind", ""),
        ("kind", "x" * 65),
    ],
)
def test_task_bounds(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as caught:
        submit(**{field: value})
    assert caught.value.errors()[0]["loc"] == (field,)


def test_task_bounds_are_inclusive() -> None:
    task = submit(priority=9, max_attempts=20, timeout_seconds=86_400, kind="a")
    assert (task.priority, task.max_attempts, task.timeout_seconds) == (9, 20, 86_400)
    assert (submit().priority, submit().max_attempts, submit().timeout_seconds, submit().payload) == (5, 3, 300, {})


def test_payload_must_be_json() -> None:
    with pytest.raises(ValidationError):
        submit(payload={"when": object()})


def test_payload_size_is_limited_on_the_command_only() -> None:
    big = {"blob": "x" * MAX_PAYLOAD_BYTES}
    with pytest.raises(ValidationError):
        submit(payload=big)
    stored = TaskSubmitted(
        task_id=ID, project_id=ID, kind="k", payload=big, priority=0, max_attempts=1, timeout_seconds=1
    )
    assert stored.payload == big


def test_attempt_numbers_start_at_one() -> None:
    with pytest.raises(ValidationError):
        StartTask(task_id=ID, worker_id="w", attempt=0)
