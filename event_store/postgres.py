"""The PostgreSQL event store (psycopg 3, async).

Why no tailing reader skips an event
------------------------------------
PostgreSQL hands out identity values when rows are inserted but makes transactions visible when
they commit, so with free concurrency position 11 can become visible before position 10, and a
reader that has moved past 10 never sees it. Here every transaction that inserts into ``events``
first takes one transaction-level advisory lock (``APPEND_LOCK_KEY``), explicitly in this module
and, for any other writer, through a statement trigger on the table (migration 0001). The lock is
held until the transaction has committed *and become visible* (PostgreSQL releases locks after it
marks the transaction committed in the proc array), so positions are handed out in commit order:
once a reader can see position P, every lower position is already committed or rolled back for
good. Holes left by rolled-back transactions never fill, so a reader may pass them.

The price is that appends are serial across the whole database. Group commit pays it back: the
appends that arrive in this process while a transaction is in flight are decided and written
together in the next one, each with its own exact concurrency check (done in memory, under the
lock, against the versions read under the lock) and its own result.

Tailing: readers poll ``global_position > last`` and wait on LISTEN between polls; writers send
one NOTIFY per transaction (not per event), with a slow poll as a fallback.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

from event_store.errors import IdempotencyKeyReused, StoreUnavailable, WrongExpectedVersion
from event_store.protocol import StreamAppend
from schemas.envelope import ANY, NO_STREAM, AppendResult, ExpectedVersion, Metadata, NewEvent, RecordedEvent, category_of

log = logging.getLogger("taskstream.event_store")

APPEND_LOCK_KEY = 7_306_010_001
NOTIFY_CHANNEL = "taskstream_events"
_COLUMNS = "global_position, stream_id, version, event_id, type, schema_version, data, metadata, recorded_at"


def request_fingerprint(parts: Sequence[StreamAppend]) -> str:
    """A stable hash of what an append asks for, ignoring the generated event ids."""
    body = json.dumps(
        [[p.stream, p.expected_version, [[e.type, e.schema_version, e.data] for e in p.events]] for p in parts],
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(body.encode()).hexdigest()


def _check_stream(stream: str) -> None:
    category_of(stream)  # raises ValueError on a malformed name


def _row_to_event(row: tuple[Any, ...]) -> RecordedEvent:
    position, stream, version, event_id, type_, schema_version, data, metadata, recorded_at = row
    return RecordedEvent(
        id=event_id,
        stream=stream,
        type=type_,
        schema_version=schema_version,
        version=version,
        global_position=position,
        recorded_at=recorded_at,
        data=data,
        metadata=metadata,
    )


@dataclass
class _Append:
    parts: list[StreamAppend]
    metadata: dict[str, Any]
    key: str | None
    fingerprint: str | None
    future: asyncio.Future[list[AppendResult]] = field(repr=False)


def make_pool(database_url: str, *, min_size: int = 2, max_size: int = 10) -> AsyncConnectionPool:
    """The pool the store expects: autocommit, so a read is one round trip (no BEGIN/COMMIT);
    appends open their own transaction. Not opened yet: ``await pool.open()`` in a loop."""
    return AsyncConnectionPool(database_url, min_size=min_size, max_size=max_size, open=False, kwargs={"autocommit": True})


class PostgresEventStore:
    """Implements ``event_store.protocol.EventStore`` over a psycopg async pool."""

    def __init__(self, pool: AsyncConnectionPool, *, notify: bool = True, max_batch: int = 512) -> None:
        self._pool = pool
        self._notify = notify
        self._max_batch = max_batch
        self._pending: list[_Append] = []
        self._writer: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, database_url: str, *, min_size: int = 2, max_size: int = 10, **kwargs: Any) -> PostgresEventStore:
        pool = make_pool(database_url, min_size=min_size, max_size=max_size)
        try:
            await pool.open(wait=True, timeout=15)
        except Exception as exc:
            raise StoreUnavailable(f"cannot connect to the event store database: {exc}") from exc
        return cls(pool, **kwargs)

    @property
    def pool(self) -> AsyncConnectionPool:
        return self._pool

    async def close(self) -> None:
        if self._writer is not None and not self._writer.done():
            await self._writer
        await self._pool.close()

    # --- writing ---------------------------------------------------------------------------

    async def append(
        self,
        stream: str,
        expected_version: ExpectedVersion,
        events: Sequence[NewEvent],
        metadata: Metadata | None = None,
        *,
        idempotency_key: str | None = None,
        fingerprint: str | None = None,
    ) -> AppendResult:
        parts = [StreamAppend(stream, expected_version, list(events))]
        (result,) = await self.append_streams(parts, metadata, idempotency_key=idempotency_key, fingerprint=fingerprint)
        return result

    async def append_streams(
        self,
        parts: Sequence[StreamAppend],
        metadata: Metadata | None = None,
        *,
        idempotency_key: str | None = None,
        fingerprint: str | None = None,
    ) -> list[AppendResult]:
        """Append to several streams atomically: every part's expected version must hold, or
        nothing is written and the first failing part's WrongExpectedVersion is raised."""
        if not parts:
            raise ValueError("an append needs at least one stream")
        if len({p.stream for p in parts}) != len(parts):
            raise ValueError("each stream may appear once in an append")
        for part in parts:
            _check_stream(part.stream)
            expected = part.expected_version
            if not isinstance(expected, int) and expected not in (ANY, NO_STREAM):
                raise ValueError(f"expected_version must be an int, 'any' or 'no_stream', not {expected!r}")
            if isinstance(expected, int) and expected < 0:
                raise ValueError("expected_version must not be negative")
        if idempotency_key is not None and fingerprint is None:
            fingerprint = request_fingerprint(parts)
        meta = (metadata or Metadata()).to_json()
        if idempotency_key is not None:
            meta.setdefault("idempotency_key", idempotency_key)
        future: asyncio.Future[list[AppendResult]] = asyncio.get_running_loop().create_future()
        self._pending.append(_Append(list(parts), meta, idempotency_key, fingerprint, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending(), name="event-store-group-commit")
        return await future

    async def idempotent_result(self, key: str, fingerprint: str) -> list[AppendResult] | None:
        """The original result of an append made with ``key``, or None if the key is unused.
        Raises IdempotencyKeyReused if the key was used for another request."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(_KNOWN_KEYS, ([key],))
            row = await cur.fetchone()
            if row is None:
                return None
            if row[1] != fingerprint:
                raise IdempotencyKeyReused(key)
            parts = _stored_parts(row[2])
            ids = [i for _, _, part_ids in parts for i in part_ids]
            cur = await conn.execute(_POSITIONS, (ids,))
            positions = {r[0]: r[1] for r in await cur.fetchall()}
        return [_result(stream, version, ids, positions, replayed=True) for stream, version, ids in parts]

    async def _write_pending(self) -> None:
        """Drain the queue: one transaction per batch; appends that arrive meanwhile form the next."""
        while self._pending:
            batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
            batch = [a for a in batch if not a.future.cancelled()]
            if not batch:
                continue
            try:
                outcomes = await self._commit(batch)
            except psycopg.errors.IntegrityError:
                # Only a caller-supplied duplicate event id gets here: find the offender.
                outcomes = await self._commit_alone(batch)
            except psycopg.Error as exc:
                log.warning("append transaction failed: %s", exc)
                outcomes = [StoreUnavailable(f"the event store failed: {type(exc).__name__}")] * len(batch)
            for append, outcome in zip(batch, outcomes, strict=True):
                if append.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    append.future.set_exception(outcome)
                else:
                    append.future.set_result(outcome)

    async def _commit_alone(self, batch: list[_Append]) -> list[list[AppendResult] | Exception]:
        outcomes: list[list[AppendResult] | Exception] = []
        for append in batch:
            try:
                outcomes.extend(await self._commit([append]))
            except psycopg.errors.IntegrityError as exc:
                outcomes.append(StoreUnavailable(f"the append violated a constraint of the events table: {exc.diag.constraint_name}"))
            except psycopg.Error as exc:
                outcomes.append(StoreUnavailable(f"the event store failed: {type(exc).__name__}"))
        return outcomes

    async def _commit(self, batch: list[_Append]) -> list[list[AppendResult] | Exception]:
        """One transaction, two round trips (pipeline mode): lock and read, then write and commit."""
        streams = sorted({p.stream for a in batch for p in a.parts})
        keys = sorted({a.key for a in batch if a.key is not None})
        async with self._pool.connection() as conn, conn.pipeline():
            async with conn.transaction():
                # READ COMMITTED: each statement after the lock sees everything committed before it.
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK_KEY,))
                versions_cur = await conn.execute(_STREAM_VERSIONS, (streams,))
                keys_cur = await conn.execute(_KNOWN_KEYS, (keys,)) if keys else None
                versions = {row[0]: row[1] for row in await versions_cur.fetchall()}
                known = {row[0]: (row[1], row[2]) for row in await keys_cur.fetchall()} if keys_cur else {}
                plan = _plan(batch, versions, known)
                insert_cur = await conn.execute(_INSERT, (plan.rows_json(),)) if plan.rows else None
                if plan.key_rows:
                    await conn.cursor().executemany(_INSERT_KEY, plan.key_rows)
                if plan.rows and self._notify:
                    await conn.execute(_NOTIFY, (NOTIFY_CHANNEL,))
                replay_cur = await conn.execute(_POSITIONS, (plan.replayed_ids,)) if plan.replayed_ids else None
            # COMMIT went out with the writes: one round trip for the whole second half.
            positions = {row[0]: row[1] for row in await insert_cur.fetchall()} if insert_cur else {}
            if replay_cur is not None:
                positions.update({row[0]: row[1] for row in await replay_cur.fetchall()})
        return plan.outcomes(positions)

    # --- reading ---------------------------------------------------------------------------

    async def read_stream(self, stream: str, from_version: int = 1, limit: int | None = None) -> list[RecordedEvent]:
        query = f"SELECT {_COLUMNS} FROM events WHERE stream_id = %s AND version >= %s ORDER BY version"
        params: list[Any] = [stream, from_version]
        if limit is not None:
            query += " LIMIT %s"
            params.append(limit)
        return await self._fetch(query, params)

    async def read_streams(self, streams: Sequence[str]) -> dict[str, list[RecordedEvent]]:
        """Several whole streams in one query (every name in the answer, empty if unknown)."""
        found: dict[str, list[RecordedEvent]] = {stream: [] for stream in streams}
        rows = await self._fetch(f"SELECT {_COLUMNS} FROM events WHERE stream_id = ANY(%s) ORDER BY stream_id, version", [list(streams)])
        for event in rows:
            found[event.stream].append(event)
        return found

    async def stream_version(self, stream: str) -> int:
        rows = await self._fetch_raw("SELECT COALESCE(max(version), 0) FROM events WHERE stream_id = %s", [stream])
        return int(rows[0][0])

    async def read_all(self, after_position: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        return await self._fetch(
            f"SELECT {_COLUMNS} FROM events WHERE global_position > %s ORDER BY global_position LIMIT %s",
            [after_position, limit],
        )

    async def read_category(self, category: str, after_position: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        return await self._fetch(
            f"SELECT {_COLUMNS} FROM events WHERE category = %s AND global_position > %s ORDER BY global_position LIMIT %s",
            [category, after_position, limit],
        )

    async def head_position(self) -> int:
        rows = await self._fetch_raw("SELECT COALESCE(max(global_position), 0) FROM events", [])
        return int(rows[0][0])

    async def _fetch(self, query: str, params: list[Any]) -> list[RecordedEvent]:
        return [_row_to_event(row) for row in await self._fetch_raw(query, params)]

    async def _fetch_raw(self, query: str, params: list[Any]) -> list[tuple[Any, ...]]:
        try:
            async with self._pool.connection() as conn:
                cur = conn.cursor(row_factory=tuple_row)
                await cur.execute(query, params)  # type: ignore[arg-type]
                return await cur.fetchall()
        except psycopg.Error as exc:
            raise StoreUnavailable(f"the event store failed: {type(exc).__name__}") from exc

    async def subscribe(
        self, after_position: int = 0, batch_size: int = 500, *, poll_interval: float = 1.0
    ) -> AsyncIterator[list[RecordedEvent]]:
        """Yield batches in global order from ``after_position``, forever. LISTEN wakes it up;
        the poll interval bounds the delay if a notification is ever missed."""
        position = after_position
        conninfo = self._pool.conninfo
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as listener:
            await listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
            while True:
                batch = await self.read_all(position, batch_size)
                if batch:
                    position = batch[-1].global_position
                    yield batch
                    if len(batch) == batch_size:
                        continue
                # Drain queued notifications, or wait for the next one.
                async for _ in listener.notifies(timeout=poll_interval, stop_after=1):
                    break


def _matches(expected: ExpectedVersion, current: int) -> bool:
    if expected == ANY:
        return True
    if expected == NO_STREAM:
        return current == 0
    return expected == current


_STREAM_VERSIONS = (
    "SELECT s.stream_id, COALESCE((SELECT e.version FROM events e WHERE e.stream_id = s.stream_id"
    " ORDER BY e.version DESC LIMIT 1), 0) FROM unnest(%s::text[]) AS s(stream_id)"
)
_KNOWN_KEYS = "SELECT key, fingerprint, result FROM idempotency_keys WHERE key = ANY(%s)"
# The batch travels as one JSON array (psycopg's text[] dumping escapes element by element).
_INSERT = (
    "INSERT INTO events (stream_id, version, event_id, type, schema_version, data, metadata)"
    " SELECT r.stream_id, r.version, r.event_id, r.type, r.schema_version, r.data, r.metadata"
    " FROM ROWS FROM (jsonb_to_recordset(%s::jsonb)"
    " AS (stream_id text, version bigint, event_id uuid, type text, schema_version int, data jsonb, metadata jsonb))"
    " WITH ORDINALITY AS r(stream_id, version, event_id, type, schema_version, data, metadata, ord)"
    " ORDER BY r.ord RETURNING event_id, global_position"
)
_INSERT_KEY = "INSERT INTO idempotency_keys (key, fingerprint, stream_id, result) VALUES (%s, %s, %s, %s::jsonb)"
_NOTIFY = "SELECT pg_notify(%s, '')"
_POSITIONS = "SELECT event_id, global_position FROM events WHERE event_id = ANY(%s)"

_Row = dict[str, Any]


_Parts = list[tuple[str, int, tuple[uuid.UUID, ...]]]  # per stream: (stream, new version, event ids)


def _stored_parts(body: dict[str, Any]) -> _Parts:
    return [(p["stream"], int(p["version"]), tuple(uuid.UUID(i) for i in p["event_ids"])) for p in body["parts"]]


def _result(stream: str, version: int, ids: tuple[uuid.UUID, ...], positions: dict[uuid.UUID, int], *, replayed: bool) -> AppendResult:
    return AppendResult(
        stream=stream,
        version=version,
        first_position=positions[ids[0]] if ids else None,
        last_position=positions[ids[-1]] if ids else None,
        event_ids=ids,
        replayed=replayed,
    )


@dataclass
class _Plan:
    """What a batch does, decided in memory under the lock from the versions read under it.

    Idempotency keys store each part's stream, new version and event ids; positions are looked
    up when a key is replayed, so the key rows need no second round trip."""

    outcome: list[tuple[str, Any]] = field(default_factory=list)  # per append: (kind, _Parts or error)
    rows: list[_Row] = field(default_factory=list)
    key_rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    replayed_ids: list[uuid.UUID] = field(default_factory=list)

    def rows_json(self) -> str:
        return json.dumps(self.rows, separators=(",", ":"))

    def outcomes(self, positions: dict[uuid.UUID, int]) -> list[list[AppendResult] | Exception]:
        return [
            value if kind == "error" else [_result(s, v, ids, positions, replayed=kind == "replay") for s, v, ids in value]
            for kind, value in self.outcome
        ]


def _plan(batch: Sequence[_Append], versions: dict[str, int], known: dict[str, tuple[str, dict[str, Any]]]) -> _Plan:
    plan = _Plan()
    decided: dict[str, tuple[str, _Parts]] = {key: (fp, _stored_parts(body)) for key, (fp, body) in known.items()}
    for append in batch:
        if append.key is not None and append.key in decided:
            fingerprint, original = decided[append.key]
            if fingerprint != append.fingerprint:
                plan.outcome.append(("error", IdempotencyKeyReused(append.key)))
            else:
                plan.outcome.append(("replay", original))
                plan.replayed_ids.extend(i for _, _, ids in original for i in ids)
            continue
        failure = next(
            (
                WrongExpectedVersion(p.stream, p.expected_version, versions.get(p.stream, 0))
                for p in append.parts
                if not _matches(p.expected_version, versions.get(p.stream, 0))
            ),
            None,
        )
        if failure is not None:
            plan.outcome.append(("error", failure))
            continue
        parts: _Parts = []
        for part in append.parts:
            current = versions.get(part.stream, 0)
            for offset, event in enumerate(part.events, start=1):
                plan.rows.append({"stream_id": part.stream, "version": current + offset, "event_id": str(event.id), "type": event.type,
                                  "schema_version": event.schema_version, "data": event.data, "metadata": append.metadata})  # fmt: skip
            versions[part.stream] = current + len(part.events)
            parts.append((part.stream, versions[part.stream], tuple(e.id for e in part.events)))
        plan.outcome.append(("new", parts))
        if append.key is not None:
            fingerprint = append.fingerprint or ""
            decided[append.key] = (fingerprint, parts)
            body = {"parts": [{"stream": s, "version": v, "event_ids": [str(i) for i in ids]} for s, v, ids in parts]}
            plan.key_rows.append((append.key, fingerprint, parts[0][0], json.dumps(body)))
    return plan
