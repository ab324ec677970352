"""Bulk folding for replays: events in as COPY text, read-model rows out as COPY text.

Pure functions, no I/O. The replay streams the ``events`` table with ``COPY … TO STDOUT``
(lines of the fields PostgreSQL printed: ``rebuild.read_events``), folds it in memory with the
live projectors' own steps (``projections.users|projects|tasks``, ``Fold.apply_text``), and
writes the rows with ``COPY … FROM STDIN``.

Why text, parsed by hand: one ``str.split`` per event and one JSON parse of ``data``
(``schemas.envelope.json_loads``, the live projector's reader) is the cheapest way through
Python; times stay the strings PostgreSQL printed (the projectors only carry them into rows, and COPY reads them back unchanged), so no datetime
and no event object is ever built. The row formatter is generated per table (one f-string per
row, no loop over columns): it is the hot path of the write side.

COPY text escaping: a backslash, tab, newline or carriage return in a value is escaped with a
backslash; ``\\N`` is NULL. ``jsonb`` output never holds a raw control character, so in a
``data`` field every backslash is a doubled one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from projections.model import ReadModel, Row
from schemas.envelope import RecordedEvent, json_loads
from schemas.registry import Registry

import orjson


def json_dumps(value: Any) -> str:
    return orjson.dumps(value, default=_default).decode()


def _default(value: Any) -> Any:
    from projections.views import json_default

    return json_default(value)


# The columns read from ``events``, in this order.
EVENT_COLUMNS = "global_position, stream_id, version, type, schema_version, data, recorded_at"

_UNESCAPE = re.compile(r"\\(.)")
_UNESCAPES = {"\\": "\\", "n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "v": "\v"}


def unescape(field_text: str) -> str:
    """A COPY text field as its value (not ``\\N``, which the caller checks)."""
    if "\\" not in field_text:
        return field_text
    return _UNESCAPE.sub(lambda m: _UNESCAPES.get(m.group(1), m.group(1)), field_text)


def escape(value: str) -> str:
    """A value as a COPY text field."""
    if value.isprintable() and "\\" not in value:
        return value
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def parse_events(text: str) -> list[RecordedEvent]:
    """Lines of COPY text of ``EVENT_COLUMNS`` as events (``id`` and ``metadata`` are not read:
    no projector looks at them; ``recorded_at`` stays the text PostgreSQL printed)."""
    events = []
    append = events.append
    loads = json_loads
    event = RecordedEvent
    for line in text.split("\n"):
        if not line:
            continue
        position, stream, version, type_, schema_version, data, recorded_at = line.split("\t")
        if "\\" in stream:
            stream = unescape(stream)
        if "\\" in type_:
            type_ = unescape(type_)
        if "\\" in data:
            data = data.replace("\\\\", "\\")
        append(event(None, stream, type_, int(schema_version), int(version), int(position), recorded_at, loads(data), {}))  # type: ignore[arg-type]
    return events


def escape_lines(text: str) -> str:
    """Raw lines of ``EVENT_COLUMNS`` (no tab or newline inside a value) as COPY text."""
    return text.replace("\\", "\\\\") if "\\" in text else text


# --- rows -------------------------------------------------------------------------------------

JSON_KIND, INT_KIND, BOOL_KIND, TEXT_KIND = "json", "int", "bool", "text"


def column_kind(sql_type: str) -> str:
    if sql_type in ("jsonb", "json"):
        return JSON_KIND
    if sql_type in ("bigint", "integer", "smallint"):
        return INT_KIND
    if sql_type == "boolean":
        return BOOL_KIND
    return TEXT_KIND


def _text(value: Any) -> str:
    if value is None:
        return "\\N"
    if type(value) is not str:
        value = value.isoformat() if hasattr(value, "isoformat") else str(value)
    if value.isprintable() and "\\" not in value:
        return value
    return escape(value)


def _json(value: Any) -> str:
    if value is None:
        return "\\N"
    return escape(json_dumps(value))


def row_formatter(columns: Sequence[tuple[str, str]]) -> Callable[[Mapping[str, Any]], str]:
    """A function that gives one COPY text line (with its newline) of a row's ``columns``
    ((name, kind) pairs). Generated: one f-string, no loop over the columns, and no call for a
    NULL, a number, a boolean or a text that needs no escaping (the common case)."""
    lines = ["def line(row):", "    get = row.get"]
    parts = []
    for index, (name, kind) in enumerate(columns):
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"unexpected column name {name!r}")
        lines.append(f"    v{index} = get({name!r})")
        v = f"v{index}"
        if kind == JSON_KIND:
            expr = f"NULL if {v} is None else _json({v})"
        elif kind == INT_KIND:
            expr = f"NULL if {v} is None else {v}.__index__()"
        elif kind == BOOL_KIND:
            expr = f"NULL if {v} is None else ('t' if {v} else 'f')"
        else:
            expr = f"{v} if {v}.__class__ is str and {v}.isprintable() and BACKSLASH not in {v} else _text({v})"
        parts.append("{" + expr + "}")
    lines.append('    return f"' + "{TAB}".join(parts) + '{NEWLINE}"')
    scope: dict[str, Any] = {"_json": _json, "_text": _text, "NULL": "\\N", "BACKSLASH": "\\", "TAB": "\t", "NEWLINE": "\n"}
    exec(compile("\n".join(lines) + "\n", f"<row formatter {len(columns)} columns>", "exec"), scope)  # noqa: S102 - our own column names
    return scope["line"]  # type: ignore[no-any-return]


def parse_rows(text: str, columns: Sequence[tuple[str, str]]) -> list[Row]:
    """COPY text lines of ``columns`` back into rows as the projectors left them (JSON parsed,
    numbers and booleans typed, times as text): for a replay that resumes."""
    rows = []
    for line in text.split("\n"):
        if not line:
            continue
        row: Row = {}
        for (name, kind), raw in zip(columns, line.split("\t"), strict=True):
            if raw == "\\N":
                row[name] = None
            elif kind == JSON_KIND:
                row[name] = json_loads(raw.replace("\\\\", "\\") if "\\" in raw else raw)
            elif kind == INT_KIND:
                row[name] = int(raw)
            elif kind == BOOL_KIND:
                row[name] = raw == "t"
            else:
                row[name] = unescape(raw)
        rows.append(row)
    return rows


# --- folding ----------------------------------------------------------------------------------


@dataclass
class Failure:
    stream: str
    version: int
    global_position: int
    type: str
    error: str


@dataclass
class Fold:
    """The rows of one read model (or one shard of it) being rebuilt, by stream, in memory.

    ``dirty``: streams whose row changed since the last flush; ``failed``: streams stopped at an
    event ``apply`` refused (as the live projector parks them: the row stays as it was before
    that event and the stream's later events wait). The fold owns ``rows``, the ones it is given
    included (``rebuild.load_rows`` makes them for it): ``apply_text`` updates them in place."""

    model: ReadModel
    registry: Registry
    rows: dict[str, Row] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    failed: dict[str, Failure] = field(default_factory=dict)
    position: int = 0
    events: int = 0

    def __post_init__(self) -> None:
        self._current = {t: cls.SCHEMA_VERSION for t, cls in self.registry.classes.items()}
        self._current_text = {t: str(v) for t, v in self._current.items()}

    def apply_text(self, text: str, *, escaped: bool = True) -> int:
        """Fold lines of ``EVENT_COLUMNS`` (COPY text as ``parse_events`` reads it, or raw values
        when not ``escaped``: ``rebuild.read_events``) and return how many were read. The same
        rows as ``apply(parse_events(text))``, cheaper: no event object, ``data`` parsed by
        ``json_loads`` straight from the line, and each stream's row updated in place with the
        projector's own steps (``projections.model.Steps``), which is the immutable fold minus
        the copies no one sees (the fold owns its rows). The ordering checks are the projector's
        own (``Steps.step_for``), so a refused event fails with the live path's error."""
        spec = self.model.steps
        if spec is None:
            events = parse_events(text if escaped else escape_lines(text))
            self.apply(events)
            return len(events)
        rows, dirty, failed = self.rows, self.dirty, self.failed
        step_for, owns = spec.step_for, self.model.owns
        current, upcast, loads = self._current_text, self.registry.upcast, json_loads
        read = 0
        position = ""
        for line in text.split("\n"):
            if not line:
                continue
            read += 1
            position, stream, version_text, type_, schema_version, data, at = line.split("\t")
            if escaped and "\\" in line:
                stream, type_, data = unescape(stream), unescape(type_), data.replace("\\\\", "\\")
            if stream in failed:
                continue
            row = rows.get(stream)
            version = int(version_text)
            have = 0 if row is None else row["version"]
            if version <= have:
                continue  # already applied (a resumed run re-reading its last chunk)
            try:
                if row is None and not owns(stream):
                    raise ValueError(f"not a {self.model.category} stream: {stream}")
                if version != have + 1:
                    raise ValueError(f"{stream}: v{version} does not follow v{have}")
                value = loads(data)
                at_position = int(position)
                if current.get(type_) != schema_version:
                    value = upcast(type_, int(schema_version), value)
                base, step = step_for(row, type_, stream, version)
                changes = step(base, value, at, at_position)  # the step read all it needs first
                if base is row:
                    row.update(changes)
                else:  # the first event: its changes are the row
                    row = rows[stream] = changes
            except Exception as exc:  # noqa: BLE001 - recorded and reported, as the live projector parks it
                failed[stream] = Failure(stream, version, int(position), type_, f"{type(exc).__name__}: {exc}")
                continue
            row["version"] = version
            row["global_position"] = at_position
            row["updated_at"] = at
            dirty.add(stream)
        if read:
            self.events += read
            self.position = int(position)
        return read

    def apply(self, events: Sequence[RecordedEvent]) -> None:
        rows, dirty, failed = self.rows, self.dirty, self.failed
        apply, current, upcast, owns = self.model.apply, self._current, self.registry.upcast, self.model.owns
        setattr_ = object.__setattr__
        for event in events:
            stream = event.stream
            if stream in failed:
                continue
            row = rows.get(stream)
            at = 0 if row is None else row["version"]
            version = event.version
            if version <= at:
                continue  # already applied (a resumed run re-reading its last chunk)
            try:
                if row is None and not owns(stream):
                    raise ValueError(f"not a {self.model.category} stream: {stream}")
                if version != at + 1:
                    raise ValueError(f"{stream}: v{version} does not follow v{at}")
                if current.get(event.type) != event.schema_version:
                    setattr_(event, "data", upcast(event.type, event.schema_version, event.data))
                rows[stream] = apply(row, event)
            except Exception as exc:  # noqa: BLE001 - recorded and reported, as the live projector parks it
                failed[stream] = Failure(stream, version, event.global_position, event.type, f"{type(exc).__name__}: {exc}")
                continue
            dirty.add(stream)
        if events:
            self.events += len(events)
            self.position = events[-1].global_position

    def take_dirty(self) -> list[Row]:
        rows = [self.rows[s] for s in self.dirty]
        self.dirty = set()
        return rows
