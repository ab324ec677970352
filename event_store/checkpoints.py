"""Named positions in the global order, stored in PostgreSQL (relay, projections, replays)."""

from __future__ import annotations

import psycopg
from psycopg_pool import AsyncConnectionPool

from event_store.errors import StoreUnavailable


class Checkpoints:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def get(self, name: str) -> int:
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute("SELECT position FROM checkpoints WHERE name = %s", (name,))
                row = await cur.fetchone()
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot read checkpoint {name!r}: {type(exc).__name__}") from exc
        return int(row[0]) if row else 0

    async def set(self, name: str, position: int) -> None:
        """Move forward only: a late or repeated write never moves a checkpoint back."""
        try:
            async with self._pool.connection() as conn:
                await conn.execute(
                    "INSERT INTO checkpoints (name, position) VALUES (%s, %s)"
                    " ON CONFLICT (name) DO UPDATE SET position = GREATEST(checkpoints.position, EXCLUDED.position),"
                    " updated_at = now()",
                    (name, position),
                )
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot write checkpoint {name!r}: {type(exc).__name__}") from exc

    async def reset(self, name: str, position: int = 0) -> None:
        """Move a checkpoint anywhere, back included: for when what it tracked was lost."""
        try:
            async with self._pool.connection() as conn:
                await conn.execute(
                    "INSERT INTO checkpoints (name, position) VALUES (%s, %s)"
                    " ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = now()",
                    (name, position),
                )
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot reset checkpoint {name!r}: {type(exc).__name__}") from exc

    async def events_past(self, name: str) -> int:
        """How many events the table holds past the checkpoint ``name`` (an exact count over
        the primary key's index, not a difference of positions: positions have gaps)."""
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT count(*) FROM events WHERE global_position >"
                    " COALESCE((SELECT position FROM checkpoints WHERE name = %s), 0)",
                    (name,),
                )
                row = await cur.fetchone()
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot count events past checkpoint {name!r}: {type(exc).__name__}") from exc
        return int(row[0]) if row else 0
