"""Domain errors: each carries a slug, a title and an HTTP status for a problem response.

The gateway turns any ``DomainError`` into RFC 9457 ``application/problem+json`` with
``to_problem()``; ``extensions`` holds the context (ids, statuses) as JSON-ready values.
"""

from __future__ import annotations

from typing import Any, ClassVar


class DomainError(Exception):
    slug: ClassVar[str] = "domain-error"
    title: ClassVar[str] = "The request breaks a domain rule"
    status: ClassVar[int] = 400

    def __init__(self, detail: str | None = None, **extensions: Any) -> None:
        self.detail = detail or self.title
        self.extensions = extensions
        super().__init__(self.detail)

    def to_problem(self, type_base: str = "/problems/") -> dict[str, Any]:
        return {
            **self.extensions,  # first, so an extension never hides a standard member
            "type": f"{type_base}{self.slug}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }


class ValidationFailed(DomainError):
    """Use ``errors=[{"field": ..., "message": ...}, ...]`` to name the failing fields."""

    slug = "validation-failed"
    title = "The request is not valid"
    status = 422


class Forbidden(DomainError):
    slug = "forbidden"
    title = "Not allowed"
    status = 403


class NotFound(DomainError):
    slug = "not-found"
    title = "No such resource"
    status = 404


class Conflict(DomainError):
    slug = "conflict"
    title = "The request conflicts with the current state"
    status = 409


class AlreadyExists(Conflict):
    slug = "already-exists"
    title = "The resource already exists"


class IllegalTransition(Conflict):
    """The command is not allowed in the aggregate's current status."""

    slug = "illegal-transition"
    title = "Not allowed in the current state"


class StaleAttempt(Conflict):
    """A worker reported on an attempt that is not the task's current one."""

    slug = "stale-attempt"
    title = "The attempt is not the current one"


class LastOwner(Conflict):
    slug = "last-owner"
    title = "A project must keep at least one owner"


class NameTaken(AlreadyExists):
    slug = "project-name-taken"
    title = "The owner already has a project with this name"
