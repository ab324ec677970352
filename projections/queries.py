"""Read-only queries over the read models, in PostgreSQL. Rows come back as views (``views``).

Lists are ordered by ``created_position`` (the global position of the entity's first event):
unique, never changing, so a cursor that carries the last one seen pages stably whatever is
written meanwhile. Project rows with ``version = 0`` (known only by their task counts) are
invisible.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from projections import views
from projections.catalog import BY_CATEGORY, MODELS

_BY_ID = {
    "users": "SELECT * FROM users WHERE user_id = %s",
    "projects": "SELECT * FROM projects WHERE project_id = %s AND version > 0",
    "tasks": "SELECT * FROM tasks WHERE task_id = %s",
}


async def get_row(pool: AsyncConnectionPool, model: str, entity_id: uuid.UUID | str) -> dict[str, Any] | None:
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(_BY_ID[model], (entity_id,))  # type: ignore[arg-type]
        return await cur.fetchone()


async def list_projects(
    pool: AsyncConnectionPool, *, member: str | None, after: int, limit: int
) -> list[tuple[int, dict[str, Any]]]:
    """(created position, view) of the projects in creation order after the cursor; ``member``: only those where that user is a
    member (None: all, for admins)."""
    where = "version > 0 AND created_position > %s"
    params: list[Any] = [after]
    if member is not None:
        where += " AND members ? %s"
        params.append(member)
    params.append(limit)
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(f"SELECT * FROM projects WHERE {where} ORDER BY created_position LIMIT %s", params)  # type: ignore[arg-type]
        return [(int(row["created_position"]), views.project(row)) for row in await cur.fetchall()]


async def list_tasks(
    pool: AsyncConnectionPool, project_id: uuid.UUID, *, status: str | None, kind: str | None, after: int, limit: int
) -> list[tuple[int, dict[str, Any]]]:
    where = "project_id = %s AND created_position > %s"
    params: list[Any] = [project_id, after]
    if status is not None:
        where += " AND status = %s"
        params.append(status)
    if kind is not None:
        where += " AND kind = %s"
        params.append(kind)
    params.append(limit)
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(f"SELECT * FROM tasks WHERE {where} ORDER BY created_position LIMIT %s", params)  # type: ignore[arg-type]
        return [(int(row["created_position"]), views.task(row)) for row in await cur.fetchall()]


async def stream_versions(pool: AsyncConnectionPool, streams: Sequence[str]) -> dict[str, int]:
    """The version each read model reflects for each stream (0: not there yet). Streams of
    categories without a read model are left out."""
    by_model: dict[str, list[uuid.UUID]] = {}
    for stream in streams:
        category = stream.partition("-")[0]
        model = BY_CATEGORY.get(category)
        if model is not None and model.owns(stream):
            by_model.setdefault(model.name, []).append(model.entity_id(stream))
    if not by_model:
        return {}
    parts, params = [], []
    for name, ids in by_model.items():
        model = MODELS[name]
        parts.append(f"SELECT %s || {model.key}::text, version FROM {name} WHERE {model.key} = ANY(%s)")
        params += [f"{model.category}-", ids]
    found: dict[str, int] = {}
    async with pool.connection() as conn:
        cur = await conn.execute(" UNION ALL ".join(parts), params)
        for stream, version in await cur.fetchall():
            found[stream] = int(version)
    return {s: found.get(s, 0) for s in streams if s.partition("-")[0] in BY_CATEGORY}


async def written_versions(pool: AsyncConnectionPool, streams: Sequence[str]) -> dict[str, int]:
    """The version of each stream in the events table (0: no such stream)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT stream_id, max(version) FROM events WHERE stream_id = ANY(%s) GROUP BY stream_id", (list(streams),)
        )
        found = {stream: int(version) for stream, version in await cur.fetchall()}
    return {s: found.get(s, 0) for s in streams}


def models_behind(required: Mapping[str, int], reached: Mapping[str, int]) -> list[str]:
    """The streams whose read model has not reached the required version yet."""
    return [s for s, v in required.items() if s in reached and reached[s] < v]
