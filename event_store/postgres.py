"""The PostgreSQL event store (psycopg 3, async).

Why no tailing reader skips an event
------------------------------------
PostgreSQL hands out identity values when rows are inserted but makes transactions visible when
they commit, so with free concurrency position 11 can become visible before position 10, and a
reader that has moved past 10 never sees it. Here every transaction that inserts into ``events``
first takes one transaction-level advisory lock (``APPEND_LOCK_KEY``), explicitly in
``taskstream_append`` (migration 0002) and, for any other writer, through a statement trigger on
the table (migration 0001). The lock is
held until the transaction has committed *and become visible* (PostgreSQL releases locks after it
marks the transaction committed in the proc array), so positions are handed out in commit order:
once a reader can see position P, every lower position is already committed or rolled back for
good. Holes left by rolled-back transactions never fill, so a reader may pass them.

The price is that appends are serial across the whole database. Group commit pays it back: the
appends that arrive in this process while a transaction is in flight are decided and written
together in the next one, each with its own exact concurrency check (done by
``taskstream_append`` under the lock, in order, so two appends to one stream in a batch see each
other) and its own result. The whole batch is one autocommit statement: one network round trip,
and the lock is held only for the writes and the commit's WAL flush.

Tailing: readers poll ``global_position > last`` and wait on LISTEN between polls; writers send
one NOTIFY per transaction (not per event), with a slow poll as a fallback.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

from event_store import _ambiguous, _fast_append
from event_store.errors import IdempotencyKeyReused, StoreUnavailable, WrongExpectedVersion
from event_store.protocol import StreamAppend
from schemas.envelope import ANY, NO_STREAM, AppendResult, ExpectedVersion, Metadata, NewEvent, RecordedEvent, category_of

log = logging.getLogger("taskstream.event_store")

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


_STREAM_NAME = re.compile(r"^[a-z][a-z0-9_]*-.+$")  # the same as the CHECK on events.stream_id


def _check_stream(stream: str) -> None:
    category_of(stream)  # raises ValueError on a malformed name
    if not _STREAM_NAME.match(stream):
        raise ValueError(f"stream name {stream!r}: the category must be lower-case letters, digits and _")


def _encode(data: Any, what: str) -> str:
    """The JSON the batch will carry, made once per append. What PostgreSQL's jsonb refuses
    (NaN, infinities, NUL characters) or JSON cannot carry is refused here, for this append
    alone, instead of failing the whole group commit."""
    try:
        encoded = json.dumps(data, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not storable as JSON: {exc}") from None
    if "\\u0000" in encoded.replace("\\\\", ""):
        raise ValueError(f"{what} contains a NUL character, which PostgreSQL cannot store")
    return encoded


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
    data_json: list[list[str]]  # per part, per event: its data, encoded once by append_streams
    metadata_json: str
    key: str | None
    fingerprint: str | None
    future: asyncio.Future[list[AppendResult]] = field(repr=False)
    requeued: bool = False  # queued again once after an ambiguous commit (see _ambiguous)


def make_pool(
    database_url: str,
    *,
    min_size: int = 2,
    max_size: int = 10,
    lock_timeout_ms: int | None = None,
    statement_timeout_ms: int | None = None,
    wait_timeout: float = 30.0,
) -> AsyncConnectionPool:
    """The pool the store expects: autocommit, so a read or a group commit is one statement and
    one round trip; READ COMMITTED whatever the database's default, because taskstream_append
    reads versions after taking the lock and relies on each statement taking a fresh snapshot,
    and the fast path relies on a collision, not a serialization failure, when it is stale.

    Bounded waits: ``lock_timeout_ms`` bounds the wait for the append lock (a forgotten
    ``BEGIN; INSERT INTO events`` session holds it) and ``statement_timeout_ms`` any statement;
    ``wait_timeout`` the wait for a free connection. Each ends in StoreUnavailable (503), with
    nothing written. Not opened yet: ``await pool.open()`` in a running loop."""
    options = "-c default_transaction_isolation=read\\ committed"
    if lock_timeout_ms:
        options += f" -c lock_timeout={int(lock_timeout_ms)}"
    if statement_timeout_ms:
        options += f" -c statement_timeout={int(statement_timeout_ms)}"
    kwargs = {"autocommit": True, "options": options}
    return AsyncConnectionPool(
        database_url, min_size=min_size, max_size=max_size, open=False, kwargs=kwargs, timeout=wait_timeout
    )


class PostgresEventStore:
    """Implements ``event_store.protocol.EventStore`` over a psycopg async pool."""

    def __init__(self, pool: AsyncConnectionPool, *, notify: bool = True, max_batch: int = 512) -> None:
        self._pool = pool
        self._notify = notify
        self._max_batch = max_batch
        self._pending: list[_Append] = []
        self._writer: asyncio.Task[None] | None = None
        # How group commits went: written by the fast path, or decided under the lock (after
        # the fast path fell back, or directly). Read by metrics and tests.
        self.commit_counts: Counter[str] = Counter()

    @classmethod
    async def connect(
        cls,
        database_url: str,
        *,
        min_size: int = 2,
        max_size: int = 10,
        lock_timeout_ms: int | None = None,
        statement_timeout_ms: int | None = None,
        **kwargs: Any,
    ) -> PostgresEventStore:
        pool = make_pool(
            database_url, min_size=min_size, max_size=max_size, lock_timeout_ms=lock_timeout_ms,
            statement_timeout_ms=statement_timeout_ms,
        )  # fmt: skip
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
        data_json: list[list[str]] = []
        for part in parts:
            _check_stream(part.stream)
            expected = part.expected_version
            data_json.append([_encode(event.data, f"the data of a {event.type!r} event") for event in part.events])
            if isinstance(expected, bool) or (not isinstance(expected, int) and expected not in (ANY, NO_STREAM)):
                raise ValueError(f"expected_version must be an int, 'any' or 'no_stream', not {expected!r}")
            if isinstance(expected, int) and expected < 0:
                raise ValueError("expected_version must not be negative")
        if idempotency_key is not None and fingerprint is None:
            fingerprint = request_fingerprint(parts)
        meta = (metadata or Metadata()).to_json()
        if idempotency_key is not None:
            meta.setdefault("idempotency_key", idempotency_key)
        metadata_json = _encode(meta, "the metadata")
        future: asyncio.Future[list[AppendResult]] = asyncio.get_running_loop().create_future()
        self._pending.append(_Append(list(parts), data_json, metadata_json, idempotency_key, fingerprint, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending(), name="event-store-group-commit")
        return await future

    async def idempotent_result(self, key: str, fingerprint: str) -> list[AppendResult] | None:
        """The original result of an append made with ``key``, or None if the key is unused.
        Raises IdempotencyKeyReused if the key was used for another request."""
        rows = await self._fetch_raw(_KNOWN_KEY, [key])
        if not rows:
            return None
        if rows[0][0] != fingerprint:
            raise IdempotencyKeyReused(key)
        return _results(rows[0][1]["parts"], replayed=True)

    async def _write_pending(self) -> None:
        """Drain the queue: one transaction per batch; appends that arrive meanwhile form the next.
        Whatever happens, every append of a batch gets an answer: none is left waiting."""
        while self._pending:
            batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
            batch = [a for a in batch if not a.future.cancelled()]
            if not batch:
                continue
            outcomes: list[list[AppendResult] | BaseException]
            try:
                try:
                    outcomes = list(await self._commit(batch))
                except (psycopg.errors.IntegrityError, psycopg.errors.DataError):
                    # Something in one append the database refused: find it, the others go on.
                    outcomes = list(await self._commit_alone(batch))
                except psycopg.Error as exc:
                    log.warning("append transaction failed: %s", exc)
                    if _ambiguous.is_ambiguous(exc):
                        outcomes = await self._resolve(batch, exc)
                    else:
                        outcomes = [StoreUnavailable(f"the event store failed: {type(exc).__name__}")] * len(batch)
            except BaseException as exc:  # noqa: BLE001 - answered below, then re-raised if fatal
                log.exception("group commit failed")
                outcomes = [StoreUnavailable("the event store failed unexpectedly")] * len(batch)
                _answer(batch, outcomes)
                if not isinstance(exc, Exception):
                    raise
                continue
            _answer(batch, outcomes)

    async def _resolve(self, batch: list[_Append], exc: psycopg.Error) -> list[list[AppendResult] | BaseException]:
        """The connection broke while the batch's statement ran: find out what was written."""
        self.commit_counts["ambiguous"] += 1
        outcomes, again = await _ambiguous.resolve(self._fetch_raw, batch, exc)
        for append in again:
            append.requeued = True
        self._pending[:0] = again  # first in the next batch; same event ids, so never written twice
        return outcomes

    async def _commit_alone(self, batch: list[_Append]) -> list[list[AppendResult] | Exception]:
        outcomes: list[list[AppendResult] | Exception] = []
        for append in batch:
            try:
                outcomes.extend(await self._commit([append]))
            except (psycopg.errors.IntegrityError, psycopg.errors.DataError) as exc:
                log.warning("append refused by the database: %s", exc)
                outcomes.append(ValueError(f"the database refused this append ({type(exc).__name__})"))
            except psycopg.Error as exc:
                outcomes.append(StoreUnavailable(f"the event store failed: {type(exc).__name__}"))
        return outcomes

    async def _commit(self, batch: list[_Append]) -> list[list[AppendResult] | Exception]:
        """One autocommit statement, one round trip. Pinned appends without keys take the fast
        path (one INSERT, see _fast_append); the rest, and any batch the fast path could not
        write, go through taskstream_append, which decides under the append lock (migration 0002)."""
        if _fast_append.eligible(batch):
            try:
                async with self._pool.connection() as conn:
                    cur = await conn.execute(_fast_append.FAST_INSERT, _fast_append.params(batch, self._notify))
                    rows = await cur.fetchall()
                if len(rows) == _fast_append.row_count(batch):
                    self.commit_counts["fast"] += 1
                    return _fast_append.results(batch, {row[0]: row[1] for row in rows})
                self.commit_counts["fast_guard_refused"] += 1
            except psycopg.errors.UniqueViolation:
                self.commit_counts["fast_collided"] += 1  # a duplicate event id: the slow path finds whose
        self.commit_counts["decided_under_lock"] += 1
        async with self._pool.connection() as conn:
            cur = await conn.execute(_APPEND, (_batch_json(batch), self._notify))
            row = await cur.fetchone()
        assert row is not None
        return _outcomes(row[0])

    # --- reading ---------------------------------------------------------------------------

    async def read_stream(self, stream: str, from_version: int = 1, limit: int | None = None) -> list[RecordedEvent]:
        query = f"SELECT {_COLUMNS} FROM events WHERE stream_id = %s AND version >= %s ORDER BY version"
        params: list[Any] = [stream, from_version]
        if limit is not None:
            query += " LIMIT %s"
            params.append(limit)
        return await self._fetch(query, params)

    async def read_streams(self, after: Mapping[str, int]) -> dict[str, list[RecordedEvent]]:
        """Several streams in one query, each from just after the version given (0: whole);
        every stream asked for is in the answer, with no events if it has none past that."""
        found: dict[str, list[RecordedEvent]] = {stream: [] for stream in after}
        rows = await self._fetch(
            # LATERAL: one index range scan per stream, whatever the planner guesses of unnest.
            f"SELECT e.* FROM unnest(%s::text[], %s::bigint[]) WITH ORDINALITY AS w(stream, after_version, ord)"
            f" CROSS JOIN LATERAL (SELECT {_COLUMNS} FROM events WHERE stream_id = w.stream"
            " AND version > w.after_version) AS e ORDER BY w.ord, e.version",
            [list(after), list(after.values())],
        )
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

    async def read_where(
        self, conditions: Sequence[str], params: Sequence[Any], *, order_by: str = "global_position", limit: int | None = None
    ) -> list[RecordedEvent]:
        """Events meeting every one of ``conditions`` (at least one; SQL of this codebase, never a
        caller's text: values go in ``params`` through ``%s``), in ``order_by`` order, at most ``limit``."""
        query = f"SELECT {_COLUMNS} FROM events WHERE {' AND '.join(conditions)} ORDER BY {order_by}"
        values = list(params)
        if limit is not None:
            query += " LIMIT %s"
            values.append(limit)
        return await self._fetch(query, values)

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


def _answer(batch: Sequence[_Append], outcomes: Sequence[list[AppendResult] | BaseException]) -> None:
    for append, outcome in zip(batch, outcomes, strict=True):
        if append.future.done() or outcome is _ambiguous.REQUEUED:
            continue
        if isinstance(outcome, BaseException):
            append.future.set_exception(outcome)
        else:
            append.future.set_result(outcome)


_APPEND = "SELECT taskstream_append(%s::jsonb, %s)"
_KNOWN_KEY = "SELECT fingerprint, result FROM idempotency_keys WHERE key = %s"


def _batch_json(batch: Sequence[_Append]) -> str:
    """The batch as taskstream_append takes it (migration 0002), around the JSON encoded once."""
    dumps = json.dumps
    items = []
    for a in batch:
        parts = []
        for part, data in zip(a.parts, a.data_json, strict=True):
            events = ",".join(
                f'{{"id":"{e.id}","type":{dumps(e.type)},"schema_version":{int(e.schema_version)},"data":{d}}}'
                for e, d in zip(part.events, data, strict=True)
            )
            parts.append(f'{{"stream":{dumps(part.stream)},"expected":{dumps(part.expected_version)},"events":[{events}]}}')
        items.append(f'{{"key":{dumps(a.key)},"fingerprint":{dumps(a.fingerprint)},"metadata":{a.metadata_json},"parts":[{",".join(parts)}]}}')
    return f"[{','.join(items)}]"


def _results(parts: list[dict[str, Any]], *, replayed: bool, positions: dict[str, int] | None = None) -> list[AppendResult]:
    """Stored results carry their positions; new ones take them from the batch's positions."""
    results = []
    for p in parts:
        ids = p["event_ids"]
        first, last = p.get("first_position"), p.get("last_position")
        if positions is not None and ids:
            first, last = positions[ids[0]], positions[ids[-1]]
        results.append(AppendResult(p["stream"], int(p["version"]), first, last, tuple(uuid.UUID(i) for i in ids), replayed))
    return results


def _outcomes(answer: dict[str, Any]) -> list[list[AppendResult] | Exception]:
    positions: dict[str, int] = answer["positions"] or {}
    outcomes: list[list[AppendResult] | Exception] = []
    for raw in answer["outcomes"]:
        kind = raw["kind"]
        if kind == "new":
            outcomes.append(_results(raw["parts"], replayed=False, positions=positions))
        elif kind == "replay":
            outcomes.append(_results(raw["parts"], replayed=True))
        elif kind == "replay_of":  # the same key and request earlier in this batch
            original = outcomes[int(raw["index"]) - 1]
            outcomes.append([replace(r, replayed=True) for r in original] if isinstance(original, list) else original)
        elif kind == "wrong_version":
            outcomes.append(WrongExpectedVersion(raw["stream"], raw["expected"], int(raw["actual"])))
        elif kind == "key_reused":
            outcomes.append(IdempotencyKeyReused(raw["key"]))
        else:
            outcomes.append(StoreUnavailable(f"taskstream_append answered an unknown outcome {kind!r}"))
    return outcomes
