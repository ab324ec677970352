"""The pure parts of the audit API: parameters, the log query, historical folds, task counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.datastructures import QueryParams

from commands.errors import ValidationFailed
from event_store.audit import LogFilter, log_conditions
from gateway import audit_params as p
from gateway.audit import history_item, public_event
from projections import timetravel
from projections.catalog import MODELS
from projections.tasks import apply as apply_task
from schemas.catalog import registry
from schemas.registry import Registry
from tests.unit.projection_testkit import interleave, project_history, recorded, task_history, user_history


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0", p.Point(position=0)),
        ("123456789012345678", p.Point(position=123456789012345678)),
        ("2026-11-30T12:00:00Z", p.Point(time=datetime(2026, 11, 30, 12, tzinfo=UTC))),
        ("2026-11-30T13:00:00.5+01:00", p.Point(time=datetime(2026, 11, 30, 13, 0, 0, 500000, tzinfo=timezone(timedelta(hours=1))))),
        ("0001-01-01T00:00:00.123456789-23:59", p.Point(time=datetime(1, 1, 1, 0, 0, 0, 123456, tzinfo=timezone(-timedelta(hours=23, minutes=59))))),
    ],
)
def test_a_point_is_a_position_or_an_rfc3339_time(raw: str, expected: p.Point) -> None:
    assert p.parse_point(raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["", "-1", "1.0", "1e3", "1234567890123456789", "yesterday", "2026-11-30", "2026-11-30T12:00:00",  # no offset
     "2026-02-30T00:00:00Z", "2026-13-01T00:00:00Z", "2026-11-30T24:00:00Z", "2026-11-30T12:00:60Z",
     "2026-11-30 12:00:00Z", "２０２６", "2026-11-30T12:00:00Z\n", "0x10"],
)  # fmt: skip
def test_anything_else_is_refused(raw: str) -> None:
    with pytest.raises(ValueError):
        p.parse_point(raw)


@settings(max_examples=200)
@given(st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))])))
def test_every_aware_time_round_trips_through_its_rfc3339_form(at: datetime) -> None:
    assert p.parse_point(at.isoformat()).time == at


def test_as_of_names_the_field_when_refused() -> None:
    with pytest.raises(ValidationFailed) as refused:
        p.as_of(QueryParams("as_of=soon"))
    assert refused.value.extensions["errors"][0]["field"] == "as_of"


def test_the_log_parameters_are_checked_together() -> None:
    query = p.log_query(QueryParams("stream=task-1&category=task&type=task.submitted&actor=worker:w1&after=5&before=2026-01-01T00:00:00Z&cursor=9&limit=3"))
    assert (query.stream, query.category, query.type, query.actor, query.cursor, query.limit) == ("task-1", "task", "task.submitted", "worker:w1", 9, 3)
    assert query.after == p.Point(position=5) and query.before == p.Point(time=datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(ValidationFailed) as refused:
        p.log_query(QueryParams("stream=nope&category=x&type=y&actor=a%20b&after=z&limit=501&cursor=-1"))
    fields = [e["field"] for e in refused.value.extensions["errors"]]
    assert fields == ["stream", "category", "type", "actor", "after", "cursor", "limit"]
    assert p.log_query(QueryParams("")).limit == p.DEFAULT_LIMIT
    assert p.history_page(QueryParams("cursor=4&limit=2")) == (4, 2)


def test_the_log_conditions_lead_with_position_and_category_then_one_per_filter_given() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    conditions, params = log_conditions(LogFilter(categories=["task"], stream="task-1", types=["task.started"], actor="a",
                                                  after_position=3, before_position=9, after_time=at, before_time=at))  # fmt: skip
    assert conditions[:2] == ["global_position > %s", "category = ANY(%s)"]
    assert params == [3, ["task"], "task-1", ["task.started"], "a", 9, at, at]
    assert " ".join(conditions).count("%s") == len(params)
    bare, bare_params = log_conditions(LogFilter(categories=["user", "task"]))
    assert not any("stream_id" in c for c in bare) and bare_params == [0, ["user", "task"]]


@settings(max_examples=60, deadline=None)
@given(history=st.one_of(task_history(), project_history(), user_history()), cut=st.integers(0, 20))
def test_a_fold_to_any_position_is_the_incremental_state_there(history, cut) -> None:  # noqa: ANN001
    events = recorded(f"{history.history[0].TYPE.partition('.')[0]}-x", history.history)
    model = next(m for m in MODELS.values() if m.category == events[0].stream.partition("-")[0])
    row = None
    for event in events[:cut]:
        row = model.apply(row, event)
    assert timetravel.fold(model, events[:cut], registry()) == row
    if cut == 0:
        assert timetravel.fold(model, [], registry()) is None


@settings(max_examples=40, deadline=None)
@given(histories=st.lists(task_history(), min_size=1, max_size=4), order=st.lists(st.integers(0, 9), max_size=40), cut=st.integers(0, 40))
def test_task_counts_then_count_the_tasks_by_their_status_then(histories, order, cut) -> None:  # noqa: ANN001
    log = interleave({f"task-{h.state.task_id}": h.history for h in histories}, order)
    then = sorted((e for e in log if e.global_position <= cut), key=lambda e: (e.stream, e.version))
    rows: dict[str, dict] = {}
    for event in then:
        rows[event.stream] = apply_task(rows.get(event.stream), event)
    expected: dict[str, int] = {}
    for row in rows.values():
        expected[row["status"]] = expected.get(row["status"], 0) + 1
    assert timetravel.task_counts(then, registry()) == expected


@settings(max_examples=5)
@given(history=user_history())
def test_events_are_upcast_before_they_are_folded(history) -> None:  # noqa: ANN001
    events = recorded("user-x", history.history)
    renamed = {**events[0].data, "name_shown": events[0].data["display_name"]}
    del renamed["display_name"]
    old = [events[0].__class__(**{**{f: getattr(events[0], f) for f in events[0].__slots__}, "data": renamed, "schema_version": 0})]

    def back(data: dict) -> dict:
        data = dict(data)
        data["display_name"] = data.pop("name_shown")
        return data

    base = registry()
    upcasting = Registry(classes=base.classes, upcasters={("user.registered", 0): back})
    assert timetravel.fold(MODELS["users"], old, upcasting)["display_name"] == events[0].data["display_name"]


@settings(max_examples=5)
@given(history=user_history())
def test_answers_built_from_events_leave_private_fields_out(history) -> None:  # noqa: ANN001
    registered = recorded("user-x", history.history)[0]
    assert "password_hash" in registered.data  # the control: the store keeps it
    assert "password_hash" not in public_event(registered)["data"]
    assert "password_hash" not in history_item(registered)["data"]
    assert history_item(registered)["actor"] is None and history_item(registered)["version"] == 1


@settings(max_examples=5)
@given(history=project_history())
def test_a_projects_historical_view_has_the_live_shape(history) -> None:  # noqa: ANN001
    row = timetravel.fold(MODELS["projects"], recorded("project-x", history.history), registry())
    assert row is not None
    view = timetravel.view(MODELS["projects"], row, {"queued": 2})
    assert view["task_counts"]["queued"] == 2 and view["task_counts"]["running"] == 0 and view["counts_revision"] == 0
