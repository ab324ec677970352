"""Who may read which event categories: the one rule every event endpoint uses."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from commands.errors import Forbidden
from gateway.auth import Principal
from gateway.event_access import ALL_CATEGORIES, PUBLIC_CATEGORIES, allowed_categories, readable_categories


def principal(role: str, **claims: object) -> Principal:
    return Principal(subject="u", role=role, claims=MappingProxyType(dict(claims)))  # type: ignore[arg-type]


def test_admins_read_every_category_internal_ones_included() -> None:
    assert readable_categories(principal("admin")) == ALL_CATEGORIES
    assert "user_email" in ALL_CATEGORIES


def test_analysts_read_the_public_categories_narrowed_by_their_claim() -> None:
    assert readable_categories(principal("analyst")) == PUBLIC_CATEGORIES
    assert readable_categories(principal("analyst", categories=["task", "user_email"])) == {"task"}
    with pytest.raises(Forbidden):
        readable_categories(principal("analyst", categories="task"))


def test_members_read_no_event_stream() -> None:
    with pytest.raises(Forbidden):
        readable_categories(principal("member"))


def test_a_requested_category_the_caller_may_not_read_is_refused_by_name() -> None:
    assert allowed_categories(principal("analyst"), ["task"]) == {"task"}
    assert allowed_categories(principal("analyst"), None) == PUBLIC_CATEGORIES
    with pytest.raises(Forbidden, match="project_name"):
        allowed_categories(principal("analyst"), ["task", "project_name"])


def test_the_token_carries_the_categories_claim() -> None:
    from gateway.auth import build_auth
    from taskstream.settings import Settings

    issuer, verifier = build_auth(Settings.from_env(database_url="unused", jwt_secret="s" * 40))
    assert issuer is not None
    token = issuer.issue("u", "analyst", categories=["task"])
    import asyncio

    seen = asyncio.run(verifier.verify(token))
    assert seen.claims["categories"] == ["task"]
