"""Who may read which event categories (the audit log, SSE streams, schemas).

One rule, shared by every endpoint that answers with events:

- ``admin``: every category, internal ones included (``user_email``, ``project_name``).
- ``analyst``: the public categories (``user``, ``project``, ``task``: the Kafka topics that are
  the analysts' contract), narrowed by the token's optional ``categories`` claim (a list of
  category names). An analyst may read the event streams and nothing else.
- ``member``: no event stream (members read their entities through the query API and their
  entities' ``/history``).

Answers built from events always pass the data through ``schemas.catalog.public_data``, so a
private field (the password hash) never leaves the store, whoever asks.
"""

from __future__ import annotations

from collections.abc import Iterable

from commands.errors import Forbidden
from gateway.auth import Principal

PUBLIC_CATEGORIES: frozenset[str] = frozenset({"user", "project", "task"})
INTERNAL_CATEGORIES: frozenset[str] = frozenset({"user_email", "project_name"})
ALL_CATEGORIES: frozenset[str] = PUBLIC_CATEGORIES | INTERNAL_CATEGORIES


def readable_categories(principal: Principal) -> frozenset[str]:
    """The categories ``principal`` may read; Forbidden (403) for a role that reads none."""
    if principal.role == "admin":
        return ALL_CATEGORIES
    if principal.role == "analyst":
        claim = principal.claims.get("categories")
        if claim is None:
            return PUBLIC_CATEGORIES
        if not isinstance(claim, list) or not all(isinstance(c, str) for c in claim):
            raise Forbidden("this token's categories claim is not a list of category names")
        return PUBLIC_CATEGORIES & frozenset(claim)
    raise Forbidden("only admins and analysts may read the event streams")


def allowed_categories(principal: Principal, requested: Iterable[str] | None) -> frozenset[str]:
    """The categories to answer with: all readable ones, or the requested ones if all readable.

    A requested category the caller may not read is a 403 naming it, never a silently empty answer.
    """
    readable = readable_categories(principal)
    if requested is None:
        return readable
    wanted = frozenset(requested)
    refused = sorted(wanted - readable)
    if refused:
        raise Forbidden(f"this token may not read the categories {', '.join(refused)}")
    return wanted


def is_analyst(principal: Principal) -> bool:
    return principal.role == "analyst"
