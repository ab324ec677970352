"""The projector's fast paths give exactly what the plain ones give: UUID parsing, record JSON,
stream ownership and the cached view bodies."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projections import projects, tasks, users, views
from projections.catalog import MODELS
from schemas.envelope import json_loads, parse_uuid
from tests.unit.projection_testkit import fold_rows, project_history, recorded, task_history, user_history


def _outcome(parse, text):  # noqa: ANN001, ANN202
    try:
        return ("ok", parse(text))
    except Exception as exc:  # noqa: BLE001 - the error is part of the outcome compared
        return ("error", type(exc))


_HEXISH = st.text(alphabet="0123456789abcdefABCDEF-_+ {}:xgurnid", min_size=30, max_size=45)


@settings(max_examples=500)
@given(st.one_of(st.uuids().map(str), st.uuids().map(lambda u: str(u).upper()), st.uuids().map(lambda u: u.hex),
                 st.uuids().map(lambda u: "{%s}" % u), _HEXISH, st.text(max_size=40)))  # fmt: skip
def test_parse_uuid_answers_as_uuid_does(text: str) -> None:
    fast, plain = _outcome(parse_uuid, text), _outcome(uuid.UUID, text)
    assert fast == plain
    if fast[0] == "ok":
        parsed = fast[1]
        assert type(parsed) is uuid.UUID and str(parsed) == str(plain[1]) and hash(parsed) == hash(plain[1])


@pytest.mark.parametrize("text", ["+2345678-1234-1234-1234-123456789abc", "0x345678-1234-1234-1234-123456789abc",
                                  " 2345678-1234-1234-1234-123456789abc", "1_345678-1234-1234-1234-123456789abc",
                                  "1234567--1234-1234-1234-123456789abc", "12345678-1234-1234-1234-123456789abg"])  # fmt: skip
def test_parse_uuid_keeps_the_odd_cases_of_uuid(text: str) -> None:
    assert _outcome(parse_uuid, text) == _outcome(uuid.UUID, text)


@pytest.mark.parametrize("value", [b'{"n": 1}', b'{"big": 123456789012345678901234567890}', b'{"x": NaN}', "[1, 2.5]"])
def test_record_json_reads_what_the_standard_decoder_reads(value: bytes | str) -> None:
    assert repr(json_loads(value)) == repr(json.loads(value))


_EDGES = [2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64, 10**18, 10**19, -(10**19)]  # where orjson stops
_NUMBER = st.one_of(st.sampled_from(_EDGES), st.integers(min_value=-(10**25), max_value=10**25), st.integers(), st.floats(allow_nan=False, allow_infinity=False))


@settings(max_examples=300)
@given(st.recursive(st.one_of(_NUMBER, st.text(alphabet="0123456789-ab", max_size=30), st.booleans(), st.none()),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
                    max_leaves=12))  # fmt: skip
def test_record_json_reads_any_document_as_the_standard_decoder(document: object) -> None:
    text = json.dumps(document)
    assert repr(json_loads(text.encode())) == repr(json.loads(text))


@pytest.mark.parametrize("value", [b"{", b"", b'{"a": 1} x', b"\xff"])
def test_record_json_refuses_what_the_standard_decoder_refuses(value: bytes) -> None:
    with pytest.raises(ValueError):
        json.loads(value)
    with pytest.raises(ValueError):
        json_loads(value)


@pytest.mark.parametrize("name", ["users", "projects", "tasks"])
@pytest.mark.parametrize("suffix", [str(uuid.uuid4()), uuid.uuid4().hex, "{%s}" % uuid.uuid4(), "nope", "", "-"])
def test_a_models_key_of_a_stream_is_uuids_canonical_text_of_its_id(name: str, suffix: str) -> None:
    model = MODELS[name]
    for stream_id in (f"{model.category}-{suffix}", f"{model.category}_x-{suffix}", f"other-{suffix}", model.category):
        try:
            expected = str(uuid.UUID(suffix)) if stream_id == f"{model.category}-{suffix}" else None
        except ValueError:
            expected = None
        assert model.key_of(stream_id) == expected
        assert model.owns(stream_id) == (expected is not None)


def _with_text_times(row: dict, offset: timezone) -> dict:  # noqa: ANN001
    """A row as PostgreSQL's to_jsonb gives it back: times as text, in another offset."""
    return {k: (v.astimezone(offset).isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


@settings(max_examples=40, deadline=None)
@given(st.one_of(task_history().map(lambda h: ("tasks", tasks.apply, f"task-{h.state.task_id}", h.history)),
                 project_history().map(lambda h: ("projects", projects.apply, f"project-{h.state.project_id}", h.history)),
                 user_history().map(lambda h: ("users", users.apply, f"user-{h.state.user_id}", h.history))),
       st.integers(min_value=0, max_value=999_999))  # fmt: skip
def test_cached_bodies_are_the_views_dumped(case, micros: int) -> None:  # noqa: ANN001
    model, apply, stream_id, history = case
    events = recorded(stream_id, history)
    events = [e.__class__(**{**{f: getattr(e, f) for f in e.__dataclass_fields__},
                             "recorded_at": e.recorded_at + timedelta(microseconds=micros)}) for e in events]  # fmt: skip
    (row,) = fold_rows(apply, events).values()
    assert views.body(model, row) == views.dumps(views.VIEWS[model](row))
    utc_text = _with_text_times(row, UTC)
    assert views.body(model, utc_text) == views.dumps(views.VIEWS[model](utc_text)) == views.body(model, row)
    other_offset = _with_text_times(row, timezone(timedelta(hours=2)))
    assert views.body(model, other_offset) == views.dumps(views.VIEWS[model](other_offset))


def test_a_naive_or_offset_time_is_shown_as_isoformat_shows_it() -> None:
    when = datetime(2026, 3, 1, 12, 0, 0, 5, tzinfo=timezone(timedelta(hours=-3)))
    base = {"user_id": uuid.uuid4(), "email": "a@example.org", "display_name": "A", "role": "member", "active": True,
            "version": 1}  # fmt: skip
    for t in (when, when.replace(tzinfo=None), when.astimezone(UTC), when.replace(microsecond=0)):
        r = {**base, "created_at": t, "updated_at": t}
        assert views.body("users", r) == views.dumps(views.user(r))
