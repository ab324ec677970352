"""The projector loop: applies batches of log records to a read model, exactly once in effect.

Guarantees
----------
- **Idempotent and order-safe.** Each row stores the stream version it reflects. An event at or
  below it is dropped; an event that would skip a version is not applied out of order: the
  missing events are read from the event store (the truth) and applied first. So redelivered,
  duplicated or reordered records leave the rows exactly as one in-order pass would.
- **Tracked with the output.** A batch's rows, the status counts it moves and the per-partition
  tracking (offset, global position, event time) are written in one transaction. The caller
  acknowledges the records to the log only after that commit, so a crash re-delivers at most
  what was not committed, and the version guard drops what was.
- **One writer per partition at a time.** The transaction takes a transaction-level advisory
  lock per (projection, topic, partition) before reading rows, so during a consumer-group
  rebalance an old and a new owner of a partition run one after the other: the second sees the
  first's rows and drops what it applied. The counts kept by difference depend on that.
- **Nothing dropped silently.** An event whose application fails (an unknown type, data the
  projector cannot read, a row the database refuses) is retried, then parked with its error in
  ``projection_failures``. Later events of that stream wait behind it: they are not applied
  while it is parked, and ``retry_parked`` applies the stream from the store once fixed.

Price: two round trips per batch of up to ``batch_size`` events, the statements pipelined: the
partition locks, the parked streams and the rows' versions (read under the locks: the server runs
them in order); then, after the fold, the upsert (for tasks with the projects' count moves in the
same statement), the tracking and the COMMIT (a third when rows must be read, see below). The
rows a projector committed last are kept in memory (``row_cache`` rows, LRU; about 1 KB each
for tasks): a row whose stored version is still the one kept is not read again, only its
version is (the fold of the same events gives the same row, whichever process wrote it).
Projects are never taken from it: the tasks projection changes their counts without moving
their version.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from projections import views
from projections.cache import ReadCache, cache_key
from projections.model import ReadModel, Row
from schemas.envelope import RecordedEvent
from schemas.registry import Registry

log = logging.getLogger("taskstream.projections")


@dataclass(frozen=True, slots=True)
class Record:
    """One record of the log, as the projector sees it."""

    event: RecordedEvent
    topic: str
    partition: int
    offset: int
    key: str | None = None  # the row's id as PostgreSQL writes it, when the caller parsed it already


@dataclass
class Outcome:
    applied: int = 0  # events applied to rows
    dropped: int = 0  # already applied (redelivered, duplicated)
    filled: int = 0  # read from the store to fill a gap
    parked: list[str] = field(default_factory=list)  # streams parked in this batch
    waiting: int = 0  # events held behind a parked stream
    rows: list[tuple[str, Row]] = field(default_factory=list)  # (model, row) written, as stored


class _StreamFailed(Exception):
    def __init__(self, event: RecordedEvent, error: BaseException) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.event = event
        self.error = error


def _lock_key(model: str, topic: str) -> str:
    return f"{model}:{topic}"


class Projector:
    """Applies batches to one read model. One instance per model per process."""

    def __init__(
        self,
        model: ReadModel,
        pool: AsyncConnectionPool,
        read_streams: Any,  # EventStore.read_streams: the store fills gaps
        registry: Registry,
        *,
        consumer: str,
        cache: ReadCache | None = None,
        attempts: int = 3,
        retry_backoff: float = 0.5,
        row_cache: int = 100_000,
    ) -> None:
        self.model = model
        self._pool = pool
        self._read_streams = read_streams
        self._registry = registry
        self._consumer = consumer
        self._cache = cache
        self._attempts = attempts
        self._retry_backoff = retry_backoff
        cols = model.columns
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in cols if c != model.key)
        self._upsert = (
            f"INSERT INTO {model.name} ({', '.join(cols)}) SELECT {', '.join(cols)}"
            f" FROM jsonb_populate_recordset(NULL::{model.name}, %s::jsonb)"
            f" ON CONFLICT ({model.key}) DO UPDATE SET {updates} WHERE {model.name}.version < EXCLUDED.version"
            f" RETURNING {model.key}::text" + (", task_counts, counts_revision" if model.name == "projects" else "")
        )
        # The tasks' upsert also moves their projects' counts, in the same statement: only the
        # moves of rows it really wrote are counted (never twice), summed per project and status
        # (a move A -> B is A - 1, B + 1; no change, no count), added in project order. It
        # answers the task ids written, then the project rows whose counts moved (as JSON).
        self._upsert_counting = (
            f"WITH up AS ({self._upsert}),"
            " moved AS (SELECT m.project_id, m.old, m.new"
            " FROM jsonb_to_recordset(%s::jsonb) AS m(task_id text, project_id uuid, old text, new text)"
            " WHERE m.task_id IN (SELECT task_id FROM up) AND m.old IS DISTINCT FROM m.new),"
            " steps AS (SELECT project_id, old AS status, -1 AS d FROM moved WHERE old IS NOT NULL"
            " UNION ALL SELECT project_id, new, 1 FROM moved),"
            " sums AS (SELECT project_id, status, sum(d)::int AS n FROM steps GROUP BY project_id, status HAVING sum(d) <> 0),"
            " deltas AS (SELECT project_id, jsonb_object_agg(status, n) AS delta FROM sums GROUP BY project_id),"
            " counted AS (INSERT INTO projects (project_id, task_counts, counts_revision)"
            " SELECT project_id, delta, 1 FROM deltas ORDER BY project_id"
            " ON CONFLICT (project_id) DO UPDATE SET"
            " task_counts = taskstream_add_counts(projects.task_counts, EXCLUDED.task_counts),"
            " counts_revision = projects.counts_revision + 1 RETURNING *)"
            " SELECT task_id, NULL::text FROM up UNION ALL SELECT NULL, to_jsonb(c)::text FROM counted AS c"
        ) if model.name == "tasks" else ""
        # Rows as one JSON text each: one parse in Python instead of a conversion per column.
        # Ids go as one array literal cast to uuid[] (a uuid[], not text[], so the key's index is
        # used; one text parameter instead of a UUID object to adapt per id).
        self._select = f"SELECT to_jsonb(t)::text FROM {model.name} AS t WHERE {model.key} = ANY(%s::uuid[])"
        # The rows this process committed last, by id: a row whose stored version is still the
        # one cached is taken from here (only its version is read). Not for projects, whose rows
        # the tasks projection also changes (the counts) without moving their version.
        self._rows: OrderedDict[str, Row] | None = OrderedDict() if row_cache > 0 and model.name != "projects" else None
        self._row_cache_size = row_cache
        self._versions = f"SELECT {model.key}::text, version FROM {model.name} WHERE {model.key} = ANY(%s::uuid[])"

    # --- the loop's one step ---------------------------------------------------------------

    async def apply_batch(self, records: Sequence[Record]) -> Outcome:
        """Apply a batch and commit it with its tracking, then refresh the cache. Retries
        transient database failures until it succeeds (the caller must not acknowledge the
        records before this returns)."""
        outcome = await self.commit_batch(records)
        await self.write_through(outcome)
        return outcome

    async def commit_batch(self, records: Sequence[Record]) -> Outcome:
        """``apply_batch`` without the cache refresh: the caller runs ``write_through(outcome)``
        afterwards (it may overlap the next batch: the cache's revision guard keeps the newer
        entry whatever the order) and acknowledges the records only once that is done."""
        delay = self._retry_backoff
        while True:
            try:
                outcome = await self._apply_once(records, isolate=None)
                break
            except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
                log.warning("%s: a batch was refused (%s); applying its streams one by one", self.model.name, exc)
                outcome = await self._apply_streams_alone(records)
                break
            except psycopg.Error as exc:
                log.warning("%s: batch failed, retrying in %.1f s: %r", self.model.name, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        return outcome

    async def write_through(self, outcome: Outcome) -> None:
        """Put the rows a committed batch wrote into the cache (never raises: see ReadCache)."""
        await self._write_through(outcome.rows)

    async def _apply_streams_alone(self, records: Sequence[Record]) -> Outcome:
        """Each stream in its own transaction; one the database keeps refusing is parked."""
        total = Outcome()
        for stream in sorted({r.event.stream for r in records}):
            for attempt in range(1, self._attempts + 1):
                try:
                    part = await self._apply_once(records, isolate=stream)
                except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
                    if attempt < self._attempts:
                        continue
                    event = min((r.event for r in records if r.event.stream == stream), key=lambda e: e.version)
                    await self._park(stream, event, exc, attempt)
                    total.parked.append(stream)
                    break
                total.applied += part.applied
                total.dropped += part.dropped
                total.filled += part.filled
                total.waiting += part.waiting
                total.parked += part.parked
                total.rows += part.rows
                break
        await self._track(records)
        return total

    async def _apply_once(self, records: Sequence[Record], *, isolate: str | None) -> Outcome:
        model = self.model
        outcome = Outcome()
        by_stream: dict[str, dict[int, RecordedEvent]] = defaultdict(dict)
        keys: dict[str, str | None] = {}  # stream -> the row's id as text (model.entity_id, canonical)
        for record in records:
            if isolate is None or record.event.stream == isolate:
                by_stream[record.event.stream].setdefault(record.event.version, record.event)
                keys.setdefault(record.event.stream, record.key)
        written: list[Row] = []  # the rows of this model the transaction wrote, for the row cache
        for stream, key in keys.items():
            if key is None:
                keys[stream] = str(model.entity_id(stream))
        async with self._pool.connection() as conn:
            async with conn.pipeline(), conn.transaction():
                # Pipelined: the lock, the parked streams and the rows' versions go in one round
                # trip; the server runs them in order, so the rows are read under the locks. (A
                # parked stream's row is read too, and left alone.)
                await self._lock_partitions(conn, records)
                parked_cur = await self._parked_query(conn, list(by_stream))
                first_read = await self._read_current(conn, list(keys.values()))
                parked = {row[0] for row in await parked_cur.fetchall()}
                current = await self._current_rows(conn, first_read)
                plans: dict[str, tuple[Row | None, list[RecordedEvent]]] = {}
                gapped: dict[str, int] = {}
                for stream, events in by_stream.items():
                    if stream in parked:
                        outcome.waiting += len(events)
                        continue
                    row = current.get(keys[stream])
                    at = int(row["version"]) if row else 0
                    pending = [events[v] for v in sorted(events) if v > at]
                    outcome.dropped += len(events) - len(pending)
                    if not pending:
                        continue
                    if [e.version for e in pending] != list(range(at + 1, at + 1 + len(pending))):
                        gapped[stream] = at
                    plans[stream] = (row, pending)
                if gapped:
                    filled = await self._read_streams(gapped)
                    for stream, events in filled.items():
                        outcome.filled += max(0, len(events) - len(plans[stream][1]))
                        plans[stream] = (plans[stream][0], list(events))
                new_rows: list[Row] = []
                moves: list[dict[str, Any]] = []
                for stream, (row, pending) in plans.items():
                    new_row, applied, failed = self._fold(row, pending)
                    if failed is not None:
                        await self._park(stream, failed.event, failed.error, self._attempts, conn=conn)
                        outcome.parked.append(stream)
                        outcome.waiting += len(pending) - applied - 1
                    if new_row is None or applied == 0:
                        continue
                    outcome.applied += applied
                    new_rows.append(new_row)
                    if model.name == "tasks":
                        moves.append({"task_id": str(new_row["task_id"]), "project_id": str(new_row["project_id"]),
                                      "old": row["status"] if row else None, "new": new_row["status"]})  # fmt: skip
                upserted = None
                if new_rows:
                    # Whole rows: the recordset takes the table's columns from them (a missing one is
                    # NULL, as r.get(c) gave) and the upsert writes only the model's columns.
                    payload = views.dumps(new_rows).decode()
                    if moves:
                        upserted = await conn.execute(self._upsert_counting, (payload, views.dumps(moves).decode()))
                    else:
                        upserted = await conn.execute(self._upsert, (payload,))
                if isolate is None:
                    await self._track(records, conn=conn)
            # Leaving the transaction queued its COMMIT, leaving the pipeline sent all that was
            # queued since the rows were read: one round trip from the fold to the commit.
            returned = await upserted.fetchall() if upserted is not None else []
        stored: dict[str, tuple[Any, ...]] = {}
        counted: list[Row] = []
        for answer in returned:
            if moves and answer[0] is None:
                counted.append(json.loads(answer[1]))
            else:
                stored[answer[0]] = answer
        # Only the rows really written: one another writer had moved past is left as it is.
        for row in new_rows:
            answer = stored.get(str(row[model.key]))
            if answer is not None:
                if model.name == "projects":
                    row = {**row, "task_counts": answer[1], "counts_revision": answer[2]}
                outcome.rows.append((model.name, row))
                written.append(row)
        outcome.rows += [("projects", row) for row in counted]
        self._remember(written)  # committed
        return outcome

    async def _read_current(self, conn: psycopg.AsyncConnection[Any], ids: list[Any]) -> Any:
        """Send the first read of ``_current_rows`` (the versions, or the rows without a row cache)
        without waiting for it."""
        if not ids:
            return None
        return await conn.execute(self._select if self._rows is None else self._versions, (_uuid_array(ids),))

    async def _current_rows(self, conn: psycopg.AsyncConnection[Any], first_read: Any) -> dict[str, Row]:
        """The stored rows (under the partition locks), by id as text: those this process wrote
        last from the row cache when their stored version is the cached one, the rest read."""
        if first_read is None:
            return {}
        loads = json.loads
        cached = self._rows
        if cached is None:
            return {row[self.model.key]: row for (text,) in await first_read.fetchall() for row in (loads(text),)}
        current: dict[str, Row] = {}
        unknown = []
        for key, version in await first_read.fetchall():
            row = cached.get(key)
            if row is not None and row["version"] == version:
                current[key] = row
            else:
                unknown.append(key)
        if unknown:
            cur = await conn.execute(self._select, (_uuid_array(unknown),))
            current.update((row[self.model.key], row) for (text,) in await cur.fetchall() for row in (loads(text),))
        return current

    def _remember(self, rows: list[Row]) -> None:
        cached = self._rows
        if cached is None:
            return
        key = self.model.key
        for row in rows:
            name = str(row[key])
            cached[name] = row
            cached.move_to_end(name)
        while len(cached) > self._row_cache_size:
            cached.popitem(last=False)

    def _fold(self, row: Row | None, events: Sequence[RecordedEvent]) -> tuple[Row | None, int, _StreamFailed | None]:
        """The row after the events, how many were applied, and the failure that stopped it:
        the events before a failing one are applied, the failing one and those after it wait."""
        for applied, event in enumerate(events):
            for attempt in range(1, self._attempts + 1):
                try:
                    data = self._registry.upcast(event.type, event.schema_version, event.data)
                    row = self.model.apply(row, event if data is event.data else replace(event, data=data))
                    break
                except Exception as exc:  # noqa: BLE001 - a failing event is parked, never lost
                    if attempt == self._attempts:
                        return row, applied, _StreamFailed(event, exc)
        return row, len(events), None

    # --- SQL -------------------------------------------------------------------------------

    async def _lock_partitions(self, conn: psycopg.AsyncConnection[Any], records: Sequence[Record]) -> None:
        """One statement; the locks are taken in a fixed order (sorted in the subquery), so two
        projectors locking overlapping sets never deadlock."""
        keys = sorted({(_lock_key(self.model.name, r.topic), r.partition) for r in records})
        if not keys:
            return
        await conn.execute(
            "SELECT count(pg_advisory_xact_lock(hashtext(k), p)) FROM"
            " (SELECT k, p FROM unnest(%s::text[], %s::int[]) AS u(k, p) ORDER BY k, p) AS ordered",
            ([k for k, _ in keys], [p for _, p in keys]),
        )

    async def _parked_query(self, conn: psycopg.AsyncConnection[Any], streams: list[str]) -> Any:
        """Send the query of the parked streams among ``streams``; their ids are its rows."""
        return await conn.execute(
            "SELECT DISTINCT stream_id FROM projection_failures"
            " WHERE projection = %s AND stream_id = ANY(%s) AND resolved_at IS NULL",
            (self.model.name, streams),
        )

    async def _track(self, records: Sequence[Record], *, conn: psycopg.AsyncConnection[Any] | None = None) -> None:
        latest: dict[tuple[str, int], Record] = {}
        for record in records:
            key = (record.topic, record.partition)
            if key not in latest or record.offset > latest[key].offset:
                latest[key] = record
        if not latest:
            return
        rows = [
            {"topic": t, "partition": p, "offset": r.offset, "position": r.event.global_position,
             "time": r.event.recorded_at.isoformat()}
            for (t, p), r in sorted(latest.items())
        ]  # fmt: skip
        query = (
            'INSERT INTO projection_tracking (projection, topic, partition, "offset", global_position, event_time, consumer)'
            " SELECT %s, t.topic, t.partition, t.offset, t.position, t.time, %s"
            " FROM jsonb_to_recordset(%s::jsonb) AS t(topic text, partition int, \"offset\" bigint, position bigint, time timestamptz)"
            " ON CONFLICT (projection, topic, partition) DO UPDATE SET"
            ' "offset" = GREATEST(projection_tracking."offset", EXCLUDED."offset"),'
            " global_position = GREATEST(projection_tracking.global_position, EXCLUDED.global_position),"
            " event_time = GREATEST(projection_tracking.event_time, EXCLUDED.event_time),"
            " consumer = EXCLUDED.consumer, updated_at = now()"
        )
        params = (self.model.name, self._consumer, json.dumps(rows))
        if conn is not None:
            await conn.execute(query, params)
            return
        async with self._pool.connection() as own:
            await own.execute(query, params)

    async def _park(
        self, stream: str, event: RecordedEvent, error: BaseException, attempts: int,
        *, conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> None:  # fmt: skip
        log.error("%s: parked %s at v%d (%s): %s", self.model.name, stream, event.version, event.type, error)
        query = (
            "INSERT INTO projection_failures (projection, stream_id, version, event_id, global_position, type, error, attempts)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (projection, stream_id, version) DO UPDATE SET error = EXCLUDED.error,"
            " attempts = projection_failures.attempts + EXCLUDED.attempts, last_failed_at = now(), resolved_at = NULL"
        )
        params = (self.model.name, stream, event.version, event.id, event.global_position, event.type,
                  f"{type(error).__name__}: {error}"[:4000], attempts)  # fmt: skip
        if conn is not None:
            await conn.execute(query, params)
            return
        async with self._pool.connection() as own:
            await own.execute(query, params)

    async def park_undecodable(self, topic: str, partition: int, offset: int, key: bytes | None, error: Any) -> None:
        """A record that is not an event of this model: parked under its key, never dropped.
        It blocks nothing (no stream is known for it); the operator sees it in the failures."""
        stream = (key or b"").decode("utf-8", "replace") or "(no key)"
        reason = error if isinstance(error, BaseException) else ValueError(f"not a {self.model.category} stream: {stream}")
        event = RecordedEvent(
            id=uuid.uuid5(uuid.NAMESPACE_URL, f"kafka:{topic}:{partition}:{offset}"), stream=stream,
            type="(undecodable)", schema_version=1, version=-(offset + 1), global_position=0,
            recorded_at=datetime.now(timezone.utc), data={}, metadata={},
        )  # fmt: skip
        await self._park(stream, event, reason, 1)
        await self._track([Record(replace(event, global_position=0), topic, partition, offset)])

    async def _write_through(self, rows: Sequence[Any]) -> None:
        if self._cache is None or not rows:
            return
        entries = []
        for model_name, row in rows:
            if int(row["version"]) == 0:  # a project known only by its task counts: not visible yet
                continue
            key_column = "project_id" if model_name == "projects" else self.model.key
            entries.append((cache_key(model_name, row[key_column]), views.revision(model_name, row), views.body(model_name, row)))
        await self._cache.put_many(entries)

    # --- operators -------------------------------------------------------------------------

    async def retry_parked(self, stream: str) -> Outcome:
        """Apply a parked stream from the store; on success its failures are resolved."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT version FROM {self.model.name} WHERE {self.model.key} = %s", (self.model.entity_id(stream),)
            )
            row = await cur.fetchone()
        at = int(row[0]) if row else 0
        events = (await self._read_streams({stream: at}))[stream]
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE projection_failures SET resolved_at = now()"
                " WHERE projection = %s AND stream_id = %s AND resolved_at IS NULL",
                (self.model.name, stream),
            )
        records = [Record(e, "", 0, 0) for e in events]
        outcome = await self._apply_once(records, isolate=stream) if records else Outcome()
        await self._write_through(outcome.rows)
        return outcome


def _uuid_array(ids: Sequence[Any]) -> str:
    """An array literal of canonical UUID texts (or UUIDs), for ``%s::uuid[]``."""
    return "{" + ",".join(map(str, ids)) + "}"


async def list_failures(pool: AsyncConnectionPool, *, include_resolved: bool = False, limit: int = 100) -> list[dict[str, Any]]:
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "SELECT projection, stream_id, version, event_id, global_position, type, error, attempts,"
            " first_failed_at, last_failed_at, resolved_at FROM projection_failures"
            + ("" if include_resolved else " WHERE resolved_at IS NULL")
            + " ORDER BY first_failed_at, projection, stream_id, version LIMIT %s",
            (limit,),
        )
        rows = await cur.fetchall()
    return [
        {k: (v.isoformat() if isinstance(v, datetime) else str(v) if isinstance(v, uuid.UUID) else v) for k, v in r.items()}
        for r in rows
    ]

