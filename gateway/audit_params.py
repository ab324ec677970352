"""The query parameters of the audit API, parsed (pure: no I/O, unit-tested on their own).

A point in the log (``as_of``, ``after``, ``before``) is either a global position (decimal
digits) or an RFC 3339 date-time with an offset (``2026-11-30T12:00:00Z``,
``2026-11-30T13:00:00.5+01:00``). A position names the log up to and including that event; a
time names the log up to and including the events recorded at or before it. Anything else is a
422 naming the field; the OpenAPI document says the same with a pattern.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from commands.errors import ValidationFailed
from gateway.event_access import ALL_CATEGORIES
from schemas.catalog import EVENTS

MAX_POSITION_DIGITS = 18  # fits a bigint
POSITION_PATTERN = rf"^[0-9]{{1,{MAX_POSITION_DIGITS}}}$"
TIME_PATTERN = (
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
_POSITION = re.compile(POSITION_PATTERN)
_TIME = re.compile(TIME_PATTERN)
STREAM_PATTERN = r"^(" + "|".join(sorted(ALL_CATEGORIES)) + r")-[!-~]{1,200}$"
_STREAM = re.compile(STREAM_PATTERN)
ACTOR_PATTERN = r"^[!-~]{1,255}$"
_ACTOR = re.compile(ACTOR_PATTERN)
EVENT_TYPES: tuple[str, ...] = tuple(sorted(cls.TYPE for cls in EVENTS))
MAX_LIMIT = 500
DEFAULT_LIMIT = 100


@dataclass(frozen=True, slots=True)
class Point:
    """A point in the log: exactly one of ``position`` and ``time`` is set."""

    position: int | None = None
    time: datetime | None = None


def parse_point(raw: str) -> Point:
    """``raw`` as a position or an RFC 3339 time; ValueError (with the reason) otherwise."""
    if _POSITION.match(raw):
        return Point(position=int(raw))
    if not _TIME.match(raw):
        raise ValueError("a global position (digits) or an RFC 3339 date-time with an offset")
    try:
        at = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("not a date that exists") from None  # e.g. February 30th
    return Point(time=at)


def point_param(params: Any, name: str, errors: list[dict[str, str]]) -> Point | None:
    raw = params.get(name)
    if raw is None:
        return None
    try:
        return parse_point(raw)
    except ValueError as exc:
        errors.append({"field": name, "message": str(exc)})
        return None


def as_of(params: Any) -> Point:
    """The ``as_of`` parameter (present), or 422."""
    errors: list[dict[str, str]] = []
    point = point_param(params, "as_of", errors)
    if point is None:
        raise ValidationFailed("as_of is a global position or an RFC 3339 date-time", errors=errors)
    return point


def limit_param(params: Any, errors: list[dict[str, str]], *, default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT) -> int:
    raw = params.get("limit")
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= maximum:
        errors.append({"field": "limit", "message": f"an integer from 1 to {maximum}"})
        return default
    return int(raw)


def cursor_param(params: Any, errors: list[dict[str, str]]) -> int:
    raw = params.get("cursor")
    if raw is None:
        return 0
    if not _POSITION.match(raw):
        errors.append({"field": "cursor", "message": "not a cursor returned by this API"})
        return 0
    return int(raw)


@dataclass(frozen=True, slots=True)
class LogQuery:
    """``GET /v1/events``: its filters, bounds and page."""

    stream: str | None
    category: str | None
    type: str | None
    actor: str | None
    after: Point | None
    before: Point | None
    cursor: int
    limit: int


def log_query(params: Any) -> LogQuery:
    """The parameters of ``GET /v1/events``; 422 naming every bad one."""
    errors: list[dict[str, str]] = []
    stream, category, type_, actor = (params.get(n) for n in ("stream", "category", "type", "actor"))
    if stream is not None and not _STREAM.match(stream):
        errors.append({"field": "stream", "message": "a stream name: <category>-<id>"})
    if category is not None and category not in ALL_CATEGORIES:
        errors.append({"field": "category", "message": f"one of {', '.join(sorted(ALL_CATEGORIES))}"})
    if type_ is not None and type_ not in EVENT_TYPES:
        errors.append({"field": "type", "message": "not an event type (GET /v1/schemas lists them)"})
    if actor is not None and not _ACTOR.match(actor):
        errors.append({"field": "actor", "message": "1-255 visible ASCII characters"})
    after, before = point_param(params, "after", errors), point_param(params, "before", errors)
    cursor, limit = cursor_param(params, errors), limit_param(params, errors)
    if errors:
        raise ValidationFailed("invalid query parameters", errors=errors)
    return LogQuery(stream, category, type_, actor, after, before, cursor, limit)


def history_page(params: Any) -> tuple[int, int]:
    """``/history``: (after this stream version, limit); 422 naming every bad one."""
    errors: list[dict[str, str]] = []
    after, limit = cursor_param(params, errors), limit_param(params, errors)
    if errors:
        raise ValidationFailed("invalid paging parameters", errors=errors)
    return after, limit
