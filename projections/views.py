"""How a read-model row is shown: the JSON of the query API, also what the cache holds.

One function per model, used by the queries (rows read from PostgreSQL) and by the projector
(rows it has just written, put in the cache): both paths give byte-identical answers.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import orjson

from schemas.tasks import TASK_STATUSES

View = dict[str, Any]


def _time(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    return datetime.fromisoformat(str(value)).isoformat()


def user(row: Mapping[str, Any], time_text: Callable[[Any], Any] = _time) -> View:
    return {
        "id": str(row["user_id"]),
        "email": row["email"],
        "display_name": row["display_name"],
        "role": row["role"],
        "active": row["active"],
        "created_at": time_text(row["created_at"]),
        "updated_at": time_text(row["updated_at"]),
        "version": row["version"],
    }


def project(row: Mapping[str, Any], time_text: Callable[[Any], Any] = _time) -> View:
    counts = row.get("task_counts") or {}
    members = row["members"] or {}
    return {
        "id": str(row["project_id"]),
        "owner_id": str(row["owner_id"]),
        "name": row["name"],
        "description": row["description"],
        "archived": row["archived"],
        "members": [{"user_id": u, "role": members[u]} for u in sorted(members)],
        "task_counts": {status: int(counts.get(status, 0)) for status in TASK_STATUSES},
        "created_at": time_text(row["created_at"]),
        "updated_at": time_text(row["updated_at"]),
        "version": row["version"],
        "counts_revision": row.get("counts_revision", 0),
    }


def task(row: Mapping[str, Any], time_text: Callable[[Any], Any] = _time) -> View:
    return {
        "id": str(row["task_id"]),
        "project_id": str(row["project_id"]),
        "kind": row["kind"],
        "payload": row["payload"],
        "status": row["status"],
        "priority": row["priority"],
        "max_attempts": row["max_attempts"],
        "timeout_seconds": row["timeout_seconds"],
        "attempts": row["attempts"],
        "worker_id": row["worker_id"],
        "retry_scheduled": row["retry_scheduled"],
        "submitted_at": time_text(row["submitted_at"]),
        "started_at": time_text(row["started_at"]),
        "succeeded_at": time_text(row["succeeded_at"]),
        "failed_at": time_text(row["failed_at"]),
        "cancelled_at": time_text(row["cancelled_at"]),
        "updated_at": time_text(row["updated_at"]),
        "result_ref": row["result_ref"],
        "result": row.get("result"),
        "summary": row["summary"],
        "last_error": row["last_error"],
        "cancel_reason": row["cancel_reason"],
        "version": row["version"],
    }


VIEWS: dict[str, Callable[..., View]] = {"users": user, "projects": project, "tasks": task}


def _time_as_is(value: Any) -> Any:
    """A datetime kept for orjson, which writes it exactly as ``isoformat`` does; else ``_time``."""
    return value if type(value) is datetime else _time(value)


def body(model: str, row: Mapping[str, Any]) -> bytes:
    """``dumps(VIEWS[model](row))``, byte for byte, with less work: the times are left to orjson
    (the projector's rows hold datetimes). The projector writes these bodies to the cache."""
    return dumps(VIEWS[model](row, _time_as_is))


def revision(model: str, row: Mapping[str, Any]) -> int:
    """Grows whenever the view changes: the stream version, plus the counts' revision for a
    project (both only ever grow, so their sum does too)."""
    if model == "projects":
        return int(row["version"]) + int(row.get("counts_revision") or 0)
    return int(row["version"])


def etag(model: str, view: Mapping[str, Any]) -> str:
    """``"<version>"``; a project's ``"<version>.<counts revision>"`` (If-Match reads the version)."""
    if model == "projects":
        return f'"{view["version"]}.{view["counts_revision"]}"'
    return f'"{view["version"]}"'


def dumps(view: View) -> bytes:
    """Compact JSON, by orjson (UUIDs and times as ``json_default`` gives them); what orjson
    refuses (an integer beyond 64 bits, a key that is not a string) by the standard encoder."""
    try:
        return orjson.dumps(view, default=json_default)
    except TypeError:
        return json.dumps(view, separators=(",", ":"), default=json_default).encode()


def json_default(value: Any) -> Any:
    """UUIDs and times as the API shows them (also the upsert's JSON of rows)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")
