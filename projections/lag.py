"""How far behind the events table a read model is, measured in PostgreSQL alone.

The first unapplied event of a model is the first event of its category, past the last point
known to be applied, whose row is missing or at a lower version (streams parked in
``projection_failures`` excepted: they are visible there). Everything before it is in the
read model, whichever partitions or processes applied it, so the answer does not depend on
broker offsets (tansu reports end offsets wrongly) and covers the relay's delay too. The lag is
then the events from there to the head of the category and the age of that first event.

Cost: an index range scan of the events past the watermark, each probed in the read model by
primary key; the watermark moves forward as the model catches up, so a model that keeps up
scans only the newest events.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from psycopg_pool import AsyncConnectionPool

from projections.model import ReadModel


@dataclass(frozen=True, slots=True)
class Lag:
    model: str
    events: int
    seconds: float
    watermark: int  # every event of the category at or below it is applied (or parked)


class LagMeter:
    """Keeps each model's watermark between measurements, so each scan starts where the last ended."""

    def __init__(self, pool: AsyncConnectionPool, models: list[ReadModel], *, scan_limit: int = 100_000) -> None:
        self._pool = pool
        self._models = models
        self._watermarks: dict[str, int] = {m.name: 0 for m in models}
        self._scan_limit = scan_limit

    async def measure(self) -> dict[str, Lag]:
        out = {}
        async with self._pool.connection() as conn:
            for model in self._models:
                start = len(model.category) + 2
                cur = await conn.execute(
                    f"SELECT e.global_position, e.recorded_at FROM events e"
                    # a stream id that is not a uuid matches no row (the projector parks it)
                    f" LEFT JOIN {model.name} r ON r.{model.key} = (CASE WHEN substr(e.stream_id, {start})"
                    f" ~ '^[0-9a-fA-F-]{{36}}$' THEN substr(e.stream_id, {start})::uuid END)"
                    " WHERE e.category = %s AND e.global_position > %s"
                    " AND (r.version IS NULL OR r.version < e.version)"
                    " AND NOT EXISTS (SELECT 1 FROM projection_failures f WHERE f.projection = %s"
                    " AND f.stream_id = e.stream_id AND f.resolved_at IS NULL)"
                    " ORDER BY e.global_position LIMIT 1",
                    (model.category, self._watermarks[model.name], model.name),
                )
                first = await cur.fetchone()
                if first is None:
                    cur = await conn.execute(
                        "SELECT COALESCE(max(global_position), 0) FROM events WHERE category = %s", (model.category,)
                    )
                    head = await cur.fetchone()
                    watermark = max(self._watermarks[model.name], int(head[0]) if head else 0)
                    self._watermarks[model.name] = watermark
                    out[model.name] = Lag(model.name, 0, 0.0, watermark)
                    continue
                position, recorded_at = int(first[0]), first[1]
                self._watermarks[model.name] = position - 1
                cur = await conn.execute(
                    "SELECT count(*) FROM (SELECT 1 FROM events WHERE category = %s AND global_position >= %s LIMIT %s) AS t",
                    (model.category, position, self._scan_limit),
                )
                counted = await cur.fetchone()
                age = max(0.0, (datetime.now(timezone.utc) - recorded_at).total_seconds())
                out[model.name] = Lag(model.name, int(counted[0]) if counted else 0, age, position - 1)
        return out
