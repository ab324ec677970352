"""The pool's work list in PostgreSQL (``worker_tasks``, migration 0006): who may act on a task, and when.

Guarantee: at any moment at most one worker holds a task's lease, and a task whose worker died
is taken over once its lease expires. A claim is one ``UPDATE ... FOR UPDATE SKIP LOCKED`` that
gives each due row a fresh ``lease_id``; every later write of the holder (renew, reschedule,
finish) names that lease_id and changes nothing once another worker has taken the row over, so
a worker that lost its lease (a long pause, a partition) learns it at its next renewal and
stops. The lease only decides whose turn it is: what happens to the task is decided by its
stream (StartTask for attempt n succeeds once; a second SucceedTask is refused), so even two
holders at once could not run an attempt twice to an effect.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from psycopg_pool import AsyncConnectionPool

log = logging.getLogger("taskstream.workers")

RestStatus = Literal["done", "dead", "cancelled"]


@dataclass(frozen=True, slots=True)
class Claim:
    task_id: uuid.UUID
    lease_id: uuid.UUID
    taken_over: bool  # the row was leased by another worker whose lease expired
    traceparent: str | None = None  # the submission's trace context: the run joins its trace


@dataclass(frozen=True, slots=True)
class NewTask:
    task_id: uuid.UUID
    project_id: uuid.UUID
    kind: str
    priority: int
    submitted_at: datetime
    lease_id: uuid.UUID | None  # set: this worker runs it now (it has a free slot)
    traceparent: str | None = None  # W3C trace context of the submission as the log delivered it


class Leases:
    def __init__(self, pool: AsyncConnectionPool, owner: str, lease_seconds: float) -> None:
        self._pool, self.owner, self.lease_seconds = pool, owner, lease_seconds
        self._done: list[tuple[uuid.UUID, uuid.UUID, int]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def _exec(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(query, params)  # type: ignore[arg-type]
            return await cur.fetchall() if cur.description else []

    async def ingest(self, tasks: Sequence[NewTask]) -> set[uuid.UUID]:
        """Insert rows for newly submitted tasks; return those inserted now (a redelivered
        ``task.submitted`` inserts nothing: the row exists, in whatever state)."""
        if not tasks:
            return set()
        rows = await self._exec(
            """
            INSERT INTO worker_tasks (task_id, project_id, kind, priority, status, due_at, lease_id, owner, submitted_at, traceparent)
            SELECT t, p, k, pr, CASE WHEN l IS NULL THEN 'queued' ELSE 'leased' END,
                   CASE WHEN l IS NULL THEN now() ELSE now() + make_interval(secs => %s) END,
                   l, CASE WHEN l IS NULL THEN NULL ELSE %s END, s, tp
              FROM unnest(%s::uuid[], %s::uuid[], %s::text[], %s::int[], %s::uuid[], %s::timestamptz[], %s::text[])
                   AS u(t, p, k, pr, l, s, tp)
            ON CONFLICT (task_id) DO NOTHING
            RETURNING task_id
            """,
            (
                self.lease_seconds, self.owner,
                [t.task_id for t in tasks], [t.project_id for t in tasks], [t.kind for t in tasks],
                [t.priority for t in tasks], [t.lease_id for t in tasks], [t.submitted_at for t in tasks],
                [t.traceparent for t in tasks],
            ),
        )  # fmt: skip
        return {row[0] for row in rows}

    async def requeue(self, task_ids: Sequence[uuid.UUID]) -> None:
        """An admin requeued these tasks: make their rows due now (a row at rest only)."""
        if task_ids:
            await self._exec(
                "UPDATE worker_tasks SET status = 'queued', due_at = now(), lease_id = NULL, owner = NULL, updated_at = now()"
                " WHERE task_id = ANY(%s) AND status IN ('dead', 'cancelled', 'done')",
                (list(task_ids),),
            )

    async def cancelled(self, task_ids: Sequence[uuid.UUID]) -> None:
        """Cancelled tasks that no worker holds are at rest at once (they are never started)."""
        if task_ids:
            await self._exec(
                "UPDATE worker_tasks SET status = 'cancelled', updated_at = now() WHERE task_id = ANY(%s) AND status = 'queued'",
                (list(task_ids),),
            )

    async def claim(self, limit: int) -> list[Claim]:
        """Lease up to ``limit`` due rows: queued ones whose time has come and leased ones
        whose lease expired, highest priority first."""
        if limit <= 0:
            return []
        rows = await self._exec(
            """
            UPDATE worker_tasks w
               SET status = 'leased', lease_id = gen_random_uuid(), owner = %s,
                   due_at = now() + make_interval(secs => %s), updated_at = now()
              FROM (SELECT task_id, status AS was FROM worker_tasks
                     WHERE status IN ('queued', 'leased') AND due_at <= now()
                     ORDER BY priority DESC, due_at LIMIT %s
                     FOR UPDATE SKIP LOCKED) c
             WHERE w.task_id = c.task_id
            RETURNING w.task_id, w.lease_id, c.was = 'leased', w.traceparent
            """,
            (self.owner, self.lease_seconds, limit),
        )
        return [Claim(task_id, lease_id, taken_over, traceparent) for task_id, lease_id, taken_over, traceparent in rows]

    async def renew(self, task_id: uuid.UUID, lease_id: uuid.UUID) -> bool:
        """Extend the lease; False if this worker no longer holds it."""
        rows = await self._exec(
            "UPDATE worker_tasks SET due_at = now() + make_interval(secs => %s), updated_at = now()"
            " WHERE task_id = %s AND lease_id = %s RETURNING 1",
            (self.lease_seconds, task_id, lease_id),
        )
        return bool(rows)

    async def reschedule(self, task_id: uuid.UUID, lease_id: uuid.UUID, delay: float, *, attempts: int, error: str | None) -> bool:
        """Give the lease back: the task is due again after ``delay`` seconds (a retry)."""
        rows = await self._exec(
            "UPDATE worker_tasks SET status = 'queued', lease_id = NULL, owner = NULL, due_at = now() + make_interval(secs => %s),"
            " attempts = %s, last_error = %s, updated_at = now() WHERE task_id = %s AND lease_id = %s RETURNING 1",
            (delay, attempts, error, task_id, lease_id),
        )
        return bool(rows)

    async def finish(self, task_id: uuid.UUID, lease_id: uuid.UUID, status: RestStatus, *, attempts: int, error: str | None = None) -> bool:
        rows = await self._exec(
            "UPDATE worker_tasks SET status = %s, lease_id = NULL, owner = NULL, attempts = %s, last_error = %s, updated_at = now()"
            " WHERE task_id = %s AND lease_id = %s RETURNING 1",
            (status, attempts, error, task_id, lease_id),
        )
        return bool(rows)

    def finish_soon(self, task_id: uuid.UUID, lease_id: uuid.UUID, attempts: int) -> None:
        """``finish(.., "done")`` batched with others finishing about now: one statement for
        many. Lost in a crash, it costs nothing but time: the lease expires and the next
        holder finds the task succeeded in its stream and puts the row at rest."""
        self._done.append((task_id, lease_id, attempts))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def flush(self) -> None:
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)

    async def _flush(self) -> None:
        while self._done:
            batch, self._done = self._done, []
            try:
                await self._exec(
                    "UPDATE worker_tasks w SET status = 'done', lease_id = NULL, owner = NULL, attempts = u.a, updated_at = now()"
                    " FROM unnest(%s::uuid[], %s::uuid[], %s::int[]) AS u(t, l, a) WHERE w.task_id = u.t AND w.lease_id = u.l",
                    ([t for t, _, _ in batch], [lease for _, lease, _ in batch], [a for _, _, a in batch]),
                )
            except Exception as exc:  # noqa: BLE001 - the leases expire and are reconciled
                log.warning("finishing %d tasks failed (their leases will expire): %r", len(batch), exc)

    async def expire(self, task_ids: Sequence[tuple[uuid.UUID, uuid.UUID]]) -> None:
        """A stopping worker hands its leases over at once instead of letting them run out."""
        for task_id, lease_id in task_ids:
            await self._exec("UPDATE worker_tasks SET due_at = now() WHERE task_id = %s AND lease_id = %s", (task_id, lease_id))

    async def prune(self, older_than_days: float = 7) -> int:
        """Forget rows at rest (done, cancelled) older than this: a redelivery of such a task
        would only insert a row that reconciles to rest again. Dead rows stay for the dead list."""
        rows = await self._exec(
            "DELETE FROM worker_tasks WHERE status IN ('done', 'cancelled') AND updated_at < now() - make_interval(secs => %s)"
            " RETURNING 1",
            (older_than_days * 86_400,),
        )
        return len(rows)

    async def queue_depth(self) -> int:
        """Submitted tasks not started yet (first runs and retries waiting for their turn)."""
        rows = await self._exec("SELECT count(*) FROM worker_tasks WHERE status = 'queued'")
        return int(rows[0][0])


async def dead_tasks(pool: AsyncConnectionPool, limit: int = 100, before: datetime | None = None) -> list[dict[str, Any]]:
    """Finally failed tasks, most recent first (the admin's dead list)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT task_id, project_id, kind, attempts, last_error, updated_at FROM worker_tasks"
            " WHERE status = 'dead' AND (%s::timestamptz IS NULL OR updated_at < %s) ORDER BY updated_at DESC LIMIT %s",
            (before, before, limit),
        )
        rows = await cur.fetchall()
    return [
        {"task_id": str(t), "project_id": str(p), "kind": k, "attempts": a, "last_error": e, "failed_at": u.isoformat()}
        for t, p, k, a, e, u in rows
    ]
