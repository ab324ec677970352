"""Password hashing: argon2id, salted, verified; the policy refuses weak input."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher, Type

from commands.errors import ValidationFailed
from commands.passwords import (
    MAX_PASSWORD_LENGTH,
    default_hasher,
    hash_password,
    needs_rehash,
    verify_password,
)

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)  # tests only


def test_the_default_hasher_is_argon2id_with_strong_parameters() -> None:
    hasher = default_hasher()
    assert hasher.type is Type.ID
    assert hasher.memory_cost >= 19 * 1024 and hasher.time_cost >= 2  # OWASP minimums


def test_hash_is_argon2id_and_salted() -> None:
    first, second = hash_password("correct horse", FAST), hash_password("correct horse", FAST)
    assert first.startswith("$argon2id$") and second.startswith("$argon2id$")
    assert first != second
    assert "correct horse" not in first


def test_verify() -> None:
    stored = hash_password("correct horse", FAST)
    assert verify_password(stored, "correct horse", FAST) is True
    assert verify_password(stored, "correct horsE", FAST) is False
    assert verify_password(stored, "x" * (MAX_PASSWORD_LENGTH + 1), FAST) is False


def test_verify_with_the_default_hasher() -> None:
    stored = hash_password("correct horse")
    assert verify_password(stored, "correct horse") is True
    assert needs_rehash(stored) is False


def test_an_unknown_user_never_verifies() -> None:
    assert verify_password(None, "not a password: only burns the time of a real check", FAST) is False
    assert verify_password(None, "correct horse", FAST) is False


def test_a_hash_made_with_other_parameters_needs_a_rehash() -> None:
    assert needs_rehash(hash_password("correct horse", FAST)) is True


@pytest.mark.parametrize("password", ["short", " " * 12, "x" * (MAX_PASSWORD_LENGTH + 1)])
def test_the_policy_refuses_weak_or_huge_passwords(password: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        hash_password(password, FAST)
    assert caught.value.status == 422
    assert [e["field"] for e in caught.value.extensions["errors"]] == ["password"]
