from __future__ import annotations

import uuid

import pytest

from commands import user_email
from commands.errors import AlreadyExists
from schemas.users import ClaimUserEmail, UserEmailClaimed


def test_a_free_email_is_claimed() -> None:
    uid = uuid.uuid4()
    assert user_email.decide(None, ClaimUserEmail(email="A@Example.org", user_id=uid)) == [
        UserEmailClaimed(email="a@example.org", user_id=uid)
    ]


def test_a_claimed_email_is_refused_for_another_user() -> None:
    state = user_email.evolve(None, UserEmailClaimed(email="a@example.org", user_id=uuid.uuid4()))
    with pytest.raises(AlreadyExists):
        user_email.decide(state, ClaimUserEmail(email="a@example.org", user_id=uuid.uuid4()))


def test_claiming_again_for_the_same_user_is_a_no_op() -> None:
    uid = uuid.uuid4()
    state = user_email.evolve(None, UserEmailClaimed(email="a@example.org", user_id=uid))
    assert user_email.decide(state, ClaimUserEmail(email="a@example.org", user_id=uid)) == []


def test_stream_ignores_case_and_surrounding_space() -> None:
    assert user_email.stream_for(" A@Example.ORG ") == user_email.stream_for("a@example.org")
    assert user_email.stream_for("a@example.org").startswith("user_email-")
