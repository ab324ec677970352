"""The fast path of a group commit: one INSERT statement, no PL/pgSQL.

Taken when every append in the batch pins its expected version (an exact version or "no
stream") and carries no idempotency key, and no stream written to appears twice in the batch
(guards, parts that only check a version, may repeat with the same expectation): then each
event's version is known before the statement runs.

Why it is exact: the versions are checked by ``taskstream_heads_ok`` (migration 0003), which
takes the append lock and only then reads, with a fresh snapshot, so every commit made before
the lock was granted is seen; a guard (a part that only checks a version) is as exact as a
written stream. Nothing is inserted unless every expectation holds; then the batch goes through
``taskstream_append``, which gives every append its exact answer. A unique-key collision (a
duplicate event id) also sends the batch there. Positions are handed out under the lock, so
commit order holds as on the slow path.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

from schemas.envelope import NO_STREAM, AppendResult, ExpectedVersion, NewEvent


class _Part(Protocol):
    stream: str
    expected_version: ExpectedVersion
    events: Sequence[NewEvent]


class _Append(Protocol):
    parts: list[Any]
    data_json: list[list[str]]  # per part, per event: the data, already encoded
    metadata_json: str
    key: str | None


FAST_INSERT = """
WITH guard AS (
    SELECT taskstream_heads_ok(%(heads)s::jsonb) AS ok
), wake AS (
    SELECT pg_notify('taskstream_events', '') WHERE %(notify)s
)
INSERT INTO events (stream_id, version, event_id, type, schema_version, data, metadata)
SELECT r.stream_id, r.version, r.event_id, r.type, r.schema_version, r.data, r.metadata
  FROM ROWS FROM (jsonb_to_recordset(%(rows)s::jsonb)
       AS (stream_id text, version bigint, event_id uuid, type text, schema_version integer, data jsonb, metadata jsonb))
       WITH ORDINALITY AS r(stream_id, version, event_id, type, schema_version, data, metadata, ord)
 CROSS JOIN guard
 WHERE guard.ok AND (NOT %(notify)s OR EXISTS (SELECT 1 FROM wake))
 ORDER BY r.ord
RETURNING event_id, global_position
"""


def eligible(batch: Sequence[_Append]) -> bool:
    """A stream that is written to appears once in the batch. A guard (a part with no events,
    which only checks a version) may appear in several appends, all expecting the same version.
    At least one event is written, so a refused guard shows as rows missing."""
    written: set[str] = set()
    guards: dict[str, int] = {}
    rows = 0
    for append in batch:
        if append.key is not None:
            return False
        for part in append.parts:
            if not (isinstance(part.expected_version, int) or part.expected_version == NO_STREAM):
                return False
            if part.stream in written:
                return False
            expected = _base(part.expected_version)
            if part.events:
                if part.stream in guards:
                    return False
                written.add(part.stream)
                rows += len(part.events)
            elif guards.setdefault(part.stream, expected) != expected:
                return False
    return rows > 0


def params(batch: Sequence[_Append], notify: bool) -> dict[str, Any]:
    """The statement's parameters, built around the JSON each append encoded once."""
    dumps = json.dumps
    heads: dict[str, int] = {}
    rows: list[str] = []
    for append in batch:
        for part, data in zip(append.parts, append.data_json, strict=True):
            base = _base(part.expected_version)
            heads[part.stream] = base
            stream, meta = dumps(part.stream), append.metadata_json
            rows.extend(
                f'{{"stream_id":{stream},"version":{base + offset},"event_id":"{event.id}","type":{dumps(event.type)},'
                f'"schema_version":{int(event.schema_version)},"data":{event_data},"metadata":{meta}}}'
                for offset, (event, event_data) in enumerate(zip(part.events, data, strict=True), start=1)
            )
    head_rows = [{"stream": stream, "expected": expected} for stream, expected in heads.items()]
    return {"heads": dumps(head_rows), "rows": f"[{','.join(rows)}]", "notify": notify}


def row_count(batch: Sequence[_Append]) -> int:
    return sum(len(part.events) for append in batch for part in append.parts)


def results(batch: Sequence[_Append], positions: dict[Any, int]) -> list[list[AppendResult] | Exception]:
    outcomes: list[list[AppendResult] | Exception] = []
    for append in batch:
        parts = []
        for part in append.parts:
            ids = tuple(e.id for e in part.events)
            parts.append(
                AppendResult(
                    stream=part.stream,
                    version=_base(part.expected_version) + len(ids),
                    first_position=positions[ids[0]] if ids else None,
                    last_position=positions[ids[-1]] if ids else None,
                    event_ids=ids,
                )
            )
        outcomes.append(parts)
    return outcomes


def _base(expected: ExpectedVersion) -> int:
    return expected if isinstance(expected, int) else 0

