"""User decider: given events, when a command, then events (or a domain error)."""

from __future__ import annotations

import uuid

import pytest

from commands import user
from commands.decider import InvalidHistory, fold
from commands.errors import AlreadyExists, IllegalTransition, NotFound
from schemas.users import (
    ChangeUserRole,
    DeactivateUser,
    RegisterUser,
    UpdateUserProfile,
    UserDeactivated,
    UserProfileUpdated,
    UserRegistered,
    UserRoleChanged,
)

USER = uuid.UUID("00000000-0000-0000-0000-0000000000a1")
HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2g"
REGISTERED = UserRegistered(
    user_id=USER, email="ada@example.org", display_name="Ada", password_hash=HASH, role="member"
)


def when(given: list[object], command: object) -> list[object]:
    return list(user.decide(fold(user.evolve, None, given), command))  # type: ignore[arg-type]


def test_register_a_new_user() -> None:
    command = RegisterUser(user_id=USER, email="Ada@Example.org", display_name="Ada", password_hash=HASH)
    assert when([], command) == [REGISTERED]


def test_register_carries_the_requested_role() -> None:
    command = RegisterUser(user_id=USER, email="a@b.io", display_name="A", password_hash=HASH, role="admin")
    [event] = when([], command)
    assert isinstance(event, UserRegistered) and event.role == "admin"


def test_register_twice_is_refused() -> None:
    command = RegisterUser(user_id=USER, email="other@example.org", display_name="X", password_hash=HASH)
    with pytest.raises(AlreadyExists) as caught:
        when([REGISTERED], command)
    assert caught.value.status == 409 and caught.value.extensions["user_id"] == str(USER)


def test_update_profile() -> None:
    assert when([REGISTERED], UpdateUserProfile(user_id=USER, display_name="Ada L.")) == [
        UserProfileUpdated(user_id=USER, display_name="Ada L.")
    ]


def test_update_profile_to_the_same_name_decides_nothing() -> None:
    assert when([REGISTERED], UpdateUserProfile(user_id=USER, display_name="Ada")) == []


def test_change_role_records_the_previous_role() -> None:
    assert when([REGISTERED], ChangeUserRole(user_id=USER, role="analyst")) == [
        UserRoleChanged(user_id=USER, role="analyst", previous_role="member")
    ]


def test_change_role_to_the_current_role_decides_nothing() -> None:
    assert when([REGISTERED], ChangeUserRole(user_id=USER, role="member")) == []


def test_deactivate() -> None:
    assert when([REGISTERED], DeactivateUser(user_id=USER, reason="left")) == [
        UserDeactivated(user_id=USER, reason="left")
    ]


@pytest.mark.parametrize(
    "command",
    [
        UpdateUserProfile(user_id=USER, display_name="B"),
        ChangeUserRole(user_id=USER, role="admin"),
        DeactivateUser(user_id=USER),
    ],
    ids=lambda c: c.TYPE,
)
def test_commands_on_an_unknown_user_are_not_found(command: object) -> None:
    with pytest.raises(NotFound):
        when([], command)


@pytest.mark.parametrize(
    "command",
    [
        UpdateUserProfile(user_id=USER, display_name="B"),
        ChangeUserRole(user_id=USER, role="admin"),
        DeactivateUser(user_id=USER),
    ],
    ids=lambda c: c.TYPE,
)
def test_a_deactivated_user_accepts_no_change(command: object) -> None:
    with pytest.raises(IllegalTransition) as caught:
        when([REGISTERED, UserDeactivated(user_id=USER)], command)
    assert caught.value.extensions["command"] == command.TYPE  # type: ignore[attr-defined]


def test_evolve_builds_the_state_from_history() -> None:
    state = fold(
        user.evolve,
        None,
        [
            REGISTERED,
            UserProfileUpdated(user_id=USER, display_name="Ada L."),
            UserRoleChanged(user_id=USER, role="admin", previous_role="member"),
            UserDeactivated(user_id=USER),
        ],
    )
    assert state == user.UserState(
        user_id=USER, email="ada@example.org", display_name="Ada L.", password_hash=HASH, role="admin", active=False
    )
    assert HASH not in repr(state)


@pytest.mark.parametrize(
    "history",
    [[UserProfileUpdated(user_id=USER, display_name="x")], [REGISTERED, REGISTERED]],
    ids=["update-before-register", "register-twice"],
)
def test_evolve_refuses_an_impossible_history(history: list[object]) -> None:
    with pytest.raises(InvalidHistory):
        fold(user.evolve, None, history)  # type: ignore[arg-type]


def test_stream_and_decider_record() -> None:
    assert user.stream_for(USER) == f"user-{USER}"
    assert user.DECIDER.fold([REGISTERED]) == fold(user.evolve, None, [REGISTERED])
