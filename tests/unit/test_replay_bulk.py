"""The replay's pure parts: COPY text in and out, and the fold over the projectors' apply."""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from projections import bulk, projects, tasks, users
from projections.catalog import MODELS
from schemas.catalog import registry
from tests.unit.projection_testkit import fold_rows, project_history, recorded, task_history, user_history


@given(st.text())
def test_escape_and_unescape_are_inverse(text: str) -> None:
    escaped = bulk.escape(text)
    assert "\t" not in escaped and "\n" not in escaped and "\r" not in escaped
    assert bulk.unescape(escaped) == text


def _copy_line(event: object, data_json: str) -> str:
    e = event  # a RecordedEvent
    return "\t".join([str(e.global_position), bulk.escape(e.stream), str(e.version), bulk.escape(e.type),  # type: ignore[attr-defined]
                      str(e.schema_version), data_json.replace("\\", "\\\\"), e.recorded_at.isoformat()])  # type: ignore[attr-defined]  # fmt: skip


@settings(max_examples=30, deadline=None)
@given(task_history(), project_history(), user_history())
def test_rows_folded_from_copy_text_equal_the_projectors_rows_and_survive_a_copy_round_trip(task, project, user) -> None:  # noqa: ANN001
    import json

    for model, agg in ((tasks.MODEL, task), (projects.MODEL, project), (users.MODEL, user)):
        entity = getattr(agg.state, model.key)
        events = recorded(f"{model.category}-{entity}", agg.history)
        text = "\n".join(_copy_line(e, json.dumps(e.data)) for e in events) + "\n"
        parsed = bulk.parse_events(text)
        assert [(e.stream, e.version, e.type, e.data) for e in parsed] == [(e.stream, e.version, e.type, e.data) for e in events]
        fold = bulk.Fold(model, registry())
        fold.apply(parsed)
        expected = fold_rows(model.apply, events)
        (stream,) = expected
        folded = fold.rows[stream]
        assert fold.dirty == {stream} and not fold.failed
        # Times stay the text PostgreSQL printed; everything else is the projector's row.
        def norm(row: dict) -> dict:  # type: ignore[type-arg]
            return {k: (v.isoformat() if hasattr(v, "isoformat") else str(v) if isinstance(v, uuid.UUID) else v) for k, v in row.items()}

        assert norm(folded) == norm(expected[stream])
        # The fast path (lines straight into rows updated in place) gives the same rows.
        fast = bulk.Fold(model, registry())
        assert fast.apply_text(text) == len(events)
        assert fast.rows == fold.rows and fast.dirty == fold.dirty and not fast.failed
        assert (fast.position, fast.events) == (fold.position, fold.events)
        kinds = {"payload": "json", "result": "json", "members": "json", "active": "bool", "archived": "bool", "retry_scheduled": "bool",
                 "priority": "int", "max_attempts": "int", "timeout_seconds": "int", "attempts": "int", "version": "int",
                 "global_position": "int", "created_position": "int"}  # fmt: skip
        columns = [(c, kinds.get(c, "text")) for c in model.columns]
        line = bulk.row_formatter(columns)(folded)
        assert line.endswith("\n") and line.count("\t") == len(columns) - 1
        (back,) = bulk.parse_rows(line, columns)
        assert norm(back) == norm({c: folded.get(c) for c in model.columns})


def test_a_failing_event_stops_its_stream_and_a_resumed_fold_skips_what_it_applied() -> None:
    model = MODELS["users"]
    uid = str(uuid.uuid4())
    stream = f"user-{uid}"
    lines = [
        f"1\t{stream}\t1\tuser.registered\t1\t" + '{"user_id": "%s", "email": "a@b.co", "display_name": "A", "role": "member"}' % uid,
        f"2\t{stream}\t2\tuser.teleported\t1\t{{}}",
        f"3\t{stream}\t3\tuser.profile_updated\t1\t" + '{"user_id": "%s", "display_name": "B"}' % uid,
    ]
    text = "\n".join(f"{line}\t2026-01-01 00:00:00+00" for line in lines)
    fold = bulk.Fold(model, registry())
    fold.apply(bulk.parse_events(text))
    assert fold.rows[stream]["version"] == 1 and fold.rows[stream]["display_name"] == "A"
    assert fold.failed[stream].version == 2 and "user.teleported" in fold.failed[stream].error
    assert fold.position == 3 and fold.events == 3
    # A fold resumed from rows already at version 1 skips event 1 and applies what follows.
    resumed = bulk.Fold(model, registry(), rows={stream: dict(fold.rows[stream])})
    resumed.apply(bulk.parse_events("\n".join(f"{line}\t2026-01-01 00:00:00+00" for line in (lines[0], lines[2]))))
    assert stream in resumed.failed and resumed.rows[stream]["version"] == 1  # v3 does not follow v1: it waits, as live
    # The fast path refuses the same events with the same errors.
    fast = bulk.Fold(model, registry())
    fast.apply_text(text)
    assert fast.rows == fold.rows and fast.failed == fold.failed and (fast.position, fast.events) == (3, 3)
    again = bulk.Fold(model, registry(), rows={stream: dict(fold.rows[stream])})
    again.apply_text("\n".join(f"{line}\t2026-01-01 00:00:00+00" for line in (lines[0], lines[2])))
    assert again.failed[stream].error == resumed.failed[stream].error
    renamed = f"2\t{stream}\t2\tuser.profile_updated\t1\t" + '{"user_id": "%s", "display_name": "B"}' % uid
    moved = bulk.Fold(model, registry(), rows={stream: dict(fold.rows[stream])})
    moved.apply_text(f"{renamed}\t2026-01-02 00:00:00+00\n")
    assert moved.rows[stream]["display_name"] == "B" and moved.rows[stream]["version"] == 2


def test_the_replay_reads_big_integers_in_a_payload_as_the_live_projector_does() -> None:
    """An integer beyond 64 bits in a task's payload stays that integer in the replayed row (orjson
    alone would make it a float): both paths read ``data`` with ``schemas.envelope.json_loads``."""
    import json
    from datetime import UTC, datetime

    from schemas.envelope import RecordedEvent

    task_id, project_id = uuid.uuid4(), uuid.uuid4()
    payload = {"big": 123456789012345678901234567890, "edge": -(2**63) - 1, "small": 7}
    data = {"task_id": str(task_id), "project_id": str(project_id), "kind": "echo", "payload": payload,
            "priority": 5, "max_attempts": 3, "timeout_seconds": 60}  # fmt: skip
    event = RecordedEvent(uuid.uuid4(), f"task-{task_id}", "task.submitted", 1, 1, 1, datetime(2026, 1, 1, tzinfo=UTC), data, {})
    fast = bulk.Fold(tasks.MODEL, registry())
    assert fast.apply_text(_copy_line(event, json.dumps(data)) + "\n") == 1 and not fast.failed
    assert fast.rows[event.stream]["payload"] == payload
    assert repr(fast.rows[event.stream]["payload"]) == repr(tasks.apply(None, event)["payload"])
