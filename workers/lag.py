"""How far the worker pool's log consumers are behind the events table, measured in PostgreSQL.

A submitted task is consumed once a worker has written its row in ``worker_tasks`` (the
consumer does that before committing the record's offset). So the consumer lag of the workers
is the ``task.submitted`` events with no row yet: their count, and the age of the oldest. Like
the projections' lag (projections/lag.py) it depends on no broker offset (tansu reports end
offsets wrongly), and it covers the relay's delay too.

Cost: an index range scan of the task category past a watermark, each event probed in
``worker_tasks`` by primary key. The watermark is the first unconsumed submission (or, when
there is none, the category's head in the same snapshot: positions follow commit order, see
event_store/postgres.py), so a pool that keeps up scans only the newest events. Rows at rest
are pruned after ``retention_days`` (``Leases.prune``); submissions older than that are not
counted, so a pruned row never reads as lag.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from psycopg_pool import AsyncConnectionPool


@dataclass(frozen=True, slots=True)
class ConsumerLag:
    events: int  # submitted tasks no worker has consumed yet
    seconds: float  # age of the oldest of them (0 when none)


class ConsumerLagMeter:
    def __init__(self, pool: AsyncConnectionPool, *, retention_days: float = 7) -> None:
        self._pool = pool
        self._watermark = 0  # every submission at or below it is consumed (or older than retention)
        self._retention_seconds = retention_days * 86_400

    async def measure(self) -> ConsumerLag:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                """
                SELECT (SELECT COALESCE(max(global_position), 0) FROM events WHERE category = 'task') AS head,
                       min(e.global_position), min(e.recorded_at), count(*)
                  FROM events e
                 WHERE e.category = 'task' AND e.global_position > %s AND e.type = 'task.submitted'
                   AND e.recorded_at > now() - make_interval(secs => %s)
                   AND NOT EXISTS (SELECT 1 FROM worker_tasks w WHERE w.task_id = (e.data->>'task_id')::uuid)
                """,
                (self._watermark, self._retention_seconds),
            )
            row = await cur.fetchone()
        assert row is not None  # an aggregate always answers one row
        head, first, oldest, count = row
        if first is None:
            self._watermark = max(self._watermark, int(head))
            return ConsumerLag(0, 0.0)
        self._watermark = int(first) - 1
        return ConsumerLag(int(count), max(0.0, (datetime.now(timezone.utc) - oldest).total_seconds()))
