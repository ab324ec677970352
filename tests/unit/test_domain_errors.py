"""Domain errors map to problem responses; fold is plain left-to-right application."""

from __future__ import annotations

import pytest

from commands.decider import fold
from commands.errors import (
    AlreadyExists,
    Conflict,
    DomainError,
    Forbidden,
    IllegalTransition,
    LastOwner,
    NameTaken,
    NotFound,
    StaleAttempt,
    ValidationFailed,
)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ValidationFailed, 422),
        (Forbidden, 403),
        (NotFound, 404),
        (Conflict, 409),
        (AlreadyExists, 409),
        (IllegalTransition, 409),
        (StaleAttempt, 409),
        (LastOwner, 409),
        (NameTaken, 409),
    ],
)
def test_each_error_has_a_status_and_its_own_slug(error: type[DomainError], status: int) -> None:
    assert error.status == status
    assert error.slug != DomainError.slug and error.title


def test_slugs_are_unique() -> None:
    classes = [
        ValidationFailed,
        Forbidden,
        NotFound,
        Conflict,
        AlreadyExists,
        IllegalTransition,
        StaleAttempt,
        LastOwner,
        NameTaken,
    ]
    assert len({cls.slug for cls in classes}) == len(classes)


def test_to_problem() -> None:
    error = IllegalTransition("task t is running", task_id="t", status_name="running")
    assert error.to_problem("https://errors.example/") == {
        "type": "https://errors.example/illegal-transition",
        "title": "Not allowed in the current state",
        "status": 409,
        "detail": "task t is running",
        "task_id": "t",
        "status_name": "running",
    }
    assert str(error) == "task t is running"


def test_extensions_never_hide_the_standard_members() -> None:
    problem = Conflict("x", status="running", type="other").to_problem()
    assert (problem["status"], problem["type"]) == (409, "/problems/conflict")


def test_detail_defaults_to_the_title() -> None:
    assert NotFound().detail == NotFound.title


def test_fold_applies_events_in_order() -> None:
    assert fold(lambda state, event: state + [event], [], [1, 2, 3]) == [1, 2, 3]
    assert fold(lambda state, event: state * 10 + event, 0, [1, 2, 3]) == 123
    assert fold(lambda state, event: state + event, 7, []) == 7
