"""An entity as it was then: its stream folded with the read model's own pure ``apply``.

The same ``apply`` and the same view function as the live read models, over the events up to a
position or a time, upcast on the way in exactly as the projector upcasts them, so a historical
answer has the shape of the live one and, at the head of the stream, its content (a project's
``counts_revision`` aside: it counts the live projector's writes, which have no history; a
historical answer carries 0).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from projections import views
from projections.model import ReadModel, Row
from projections.tasks import apply as apply_task
from schemas.envelope import RecordedEvent
from schemas.registry import Registry
from schemas.tasks import TASK_STATUSES


def upcast(registry: Registry, event: RecordedEvent) -> RecordedEvent:
    """``event`` with its data at the current schema version (as the projector sees it)."""
    return replace(event, data=registry.upcast(event.type, event.schema_version, event.data))


def fold(model: ReadModel, events: Iterable[RecordedEvent], registry: Registry) -> Row | None:
    """The row after ``events`` (one stream, in version order); None before its first event."""
    row: Row | None = None
    for event in events:
        row = model.apply(row, upcast(registry, event))
    return row


def task_counts(task_events: Iterable[RecordedEvent], registry: Registry) -> dict[str, int]:
    """Tasks by status after ``task_events`` (several task streams, each in version order)."""
    rows: dict[str, Row | None] = {}
    for event in task_events:
        rows[event.stream] = apply_task(rows.get(event.stream), upcast(registry, event))
    counts = dict.fromkeys(TASK_STATUSES, 0)
    for row in rows.values():
        if row is not None:
            counts[row["status"]] += 1
    return {status: n for status, n in counts.items() if n}


def view(model: ReadModel, row: Row, counts: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The query API's JSON of a folded row (a project's with its task counts then)."""
    if model.name == "projects":
        row = {**row, "task_counts": dict(counts or {}), "counts_revision": 0}
    return views.VIEWS[model.name](row)
