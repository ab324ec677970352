from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from event_store.relay import cloudevent_headers, encode_value, topic_for
from schemas.envelope import RecordedEvent

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def event(**overrides: object) -> RecordedEvent:
    values: dict[str, object] = {
        "id": uuid.uuid4(),
        "stream": f"task-{uuid.uuid4()}",
        "type": "task.submitted",
        "schema_version": 1,
        "version": 3,
        "global_position": 42,
        "recorded_at": datetime(2026, 11, 28, 12, 0, tzinfo=UTC),
        "data": {"a": 1},
        "metadata": {},
    }
    values.update(overrides)
    return RecordedEvent(**values)  # type: ignore[arg-type]


@given(data=st.dictionaries(st.text(max_size=10), json_values, max_size=5), position=st.integers(1, 2**62))
def test_value_round_trips_through_json(data: dict[str, object], position: int) -> None:
    original = event(data=data, global_position=position)
    assert RecordedEvent.from_json(json.loads(encode_value(original))) == original


def test_cloudevents_headers() -> None:
    e = event(metadata={"traceparent": "00-abc-def-01"})
    headers = dict(cloudevent_headers(e, "urn:test"))
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_id"] == str(e.id).encode()
    assert headers["ce_type"] == b"task.submitted"
    assert headers["ce_source"] == b"urn:test"
    assert headers["ce_subject"] == e.stream.encode()
    assert headers["ce_time"] == b"2026-11-28T12:00:00+00:00"
    assert headers["traceparent"] == b"00-abc-def-01"
    assert "traceparent" not in dict(cloudevent_headers(event(), "urn:test"))


def test_topic_per_category() -> None:
    assert topic_for("events.", "task") == "events.task"


def test_private_fields_are_left_out_of_published_events() -> None:
    from event_store.relay import redacted
    from schemas.catalog import public_data

    registered = event(type="user.registered", data={"user_id": "u", "email": "a@b.co", "password_hash": "$argon2id$x"})
    published = json.loads(encode_value(redacted(registered, public_data)))
    assert "password_hash" not in published["data"] and published["data"]["email"] == "a@b.co"
    other = event(type="task.submitted", data={"kind": "x"})
    assert redacted(other, public_data) is other
