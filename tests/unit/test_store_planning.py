"""The event store's pure parts: fingerprints, fast-path planning, outcome decoding."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from event_store import _fast_append
from event_store.errors import IdempotencyKeyReused, WrongExpectedVersion
from event_store.postgres import _batch_json, _outcomes, request_fingerprint
from event_store.protocol import StreamAppend
from schemas.envelope import ANY, NO_STREAM, NewEvent

data = st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3)


@dataclass
class Append:
    parts: list[StreamAppend]
    metadata: dict[str, Any] = field(default_factory=dict)
    key: str | None = None
    fingerprint: str | None = None
    future: Any = None

    @property
    def data_json(self) -> list[list[str]]:
        return [[json.dumps(e.data) for e in p.events] for p in self.parts]

    @property
    def metadata_json(self) -> str:
        return json.dumps(self.metadata)


def part(stream: str | None = None, expected: Any = NO_STREAM, n: int = 1) -> StreamAppend:
    return StreamAppend(stream or f"task-{uuid.uuid4()}", expected, [NewEvent("x", {"i": i}) for i in range(n)])


@given(payload=data, version=st.integers(0, 100))
def test_fingerprint_ignores_event_ids_but_not_content(payload: dict[str, Any], version: int) -> None:
    a = [StreamAppend("task-1", version, [NewEvent("t", payload)])]
    b = [StreamAppend("task-1", version, [NewEvent("t", dict(payload))])]  # new event ids
    assert request_fingerprint(a) == request_fingerprint(b)
    assert request_fingerprint(a) != request_fingerprint([StreamAppend("task-1", version + 1, [NewEvent("t", payload)])])
    assert request_fingerprint(a) != request_fingerprint([StreamAppend("task-1", version, [NewEvent("t", {**payload, "extra": 1})])])


def test_fast_path_takes_only_pinned_keyless_distinct_non_empty_batches() -> None:
    assert _fast_append.eligible([Append([part()]), Append([part(expected=3), part()])])
    assert not _fast_append.eligible([Append([part(expected=ANY)])])
    assert not _fast_append.eligible([Append([part()], key="k")])
    assert not _fast_append.eligible([Append([part(n=0)])])
    shared = f"task-{uuid.uuid4()}"
    assert not _fast_append.eligible([Append([part(shared)]), Append([part(shared, expected=1)])])


def test_fast_path_rows_follow_the_expected_versions() -> None:
    batch = [Append([part("task-a", 4, n=2)], metadata={"actor": "u"}), Append([part("task-b", NO_STREAM)])]
    params = _fast_append.params(batch, notify=True)
    heads = json.loads(params["heads"])
    rows = json.loads(params["rows"])
    assert heads == [{"stream": "task-a", "expected": 4}, {"stream": "task-b", "expected": 0}]
    assert [(r["stream_id"], r["version"]) for r in rows] == [("task-a", 5), ("task-a", 6), ("task-b", 1)]
    assert rows[0]["metadata"] == {"actor": "u"} and params["notify"] is True
    assert _fast_append.row_count(batch) == 3
    positions = {uuid.UUID(r["event_id"]): 100 + i for i, r in enumerate(rows)}
    (a,), (b,) = _fast_append.results(batch, positions)  # type: ignore[misc]
    assert (a.version, a.first_position, a.last_position) == (6, 100, 101)
    assert (b.version, b.first_position, b.last_position) == (1, 102, 102)


def test_outcomes_of_taskstream_append_are_decoded() -> None:
    ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    answer = {
        "outcomes": [
            {"kind": "new", "parts": [{"stream": "task-a", "version": 2, "event_ids": ids}]},
            {"kind": "replay_of", "index": 1},
            {"kind": "replay", "parts": [{"stream": "task-b", "version": 1, "event_ids": [], "first_position": None, "last_position": None}]},
            {"kind": "wrong_version", "stream": "task-c", "expected": 3, "actual": 5},
            {"kind": "key_reused", "key": "k"},
        ],
        "positions": {ids[0]: 7, ids[1]: 8},
    }
    new, replay_of, replay, wrong, reused = _outcomes(answer)
    assert isinstance(new, list) and (new[0].first_position, new[0].last_position, new[0].replayed) == (7, 8, False)
    assert isinstance(replay_of, list) and replay_of[0].replayed and replay_of[0].last_position == 8
    assert isinstance(replay, list) and replay[0].replayed and replay[0].version == 1
    assert isinstance(wrong, WrongExpectedVersion) and (wrong.expected, wrong.actual) == (3, 5)
    assert isinstance(reused, IdempotencyKeyReused)


def test_batch_json_carries_everything_the_function_needs() -> None:
    batch = [Append([part("task-a", ANY)], metadata={"actor": "u"}, key="k", fingerprint="f")]
    (item,) = json.loads(_batch_json(batch))  # type: ignore[arg-type]
    assert item["key"] == "k" and item["fingerprint"] == "f" and item["metadata"] == {"actor": "u"}
    assert item["parts"][0]["stream"] == "task-a" and item["parts"][0]["expected"] == "any"
    assert item["parts"][0]["events"][0]["type"] == "x" and item["parts"][0]["events"][0]["data"] == {"i": 0}


@pytest.mark.parametrize("stream", ["nodash", "-x", "task-"])
def test_malformed_stream_names(stream: str) -> None:
    from schemas.envelope import category_of

    with pytest.raises(ValueError, match="category"):
        category_of(stream)
