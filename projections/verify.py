"""``taskstream verify``: the live read models against a fresh replay of the events table.

A replay is built beside the live tables (not swapped) up to the head of the log, then each
table pair is compared: row counts, a checksum per table, and the rows that differ, by id.

What is compared is what a reader sees: every column of the row, except ``counts_revision``
(it counts how often the live projector moved a project's counts, a history no replay can
know) and status counts of zero in ``task_counts`` (the live projector keeps a count that went
back to zero; a recount has no such key; both read as 0).

The live tables keep moving while this runs. A live row at a higher version than the replay's
moved on after the replay's snapshot: it is not a difference. A live row behind the replay is
lagging: the comparison is repeated for up to ``settle`` seconds before it counts as one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from projections import rebuild
from projections.catalog import MODELS


def canonical(model: str, alias: str) -> sql.Composable:
    """The jsonb a row is compared by."""
    row = sql.SQL("(to_jsonb({a}) - 'counts_revision')").format(a=sql.Identifier(alias))
    if model != "projects":
        return row
    return sql.SQL(
        "jsonb_set({row}, '{{task_counts}}', (SELECT COALESCE(jsonb_object_agg(key, value), '{{}}'::jsonb)"
        " FROM jsonb_each({a}.task_counts) WHERE value <> '0'::jsonb))"
    ).format(row=row, a=sql.Identifier(alias))


@dataclass
class TableReport:
    model: str
    live_rows: int
    replay_rows: int
    live_checksum: str
    replay_checksum: str
    differences: list[dict[str, Any]] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return not self.differences

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "live_rows": self.live_rows, "replay_rows": self.replay_rows,
                "live_checksum": self.live_checksum, "replay_checksum": self.replay_checksum,
                "equal": self.equal, "differences": self.differences}  # fmt: skip


def checksum(conn: psycopg.Connection[Any], model: str, table: str) -> tuple[int, str]:
    key = sql.Identifier(MODELS[model].key)
    row = conn.execute(
        sql.SQL("SELECT count(*), COALESCE(md5(string_agg(md5(({c})::text), '' ORDER BY t.{k})), '') FROM {t} AS t").format(
            c=canonical(model, "t"), k=key, t=rebuild.ident(table)
        )
    ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def differences(conn: psycopg.Connection[Any], model: str, live: str, replay: str, *, limit: int) -> list[dict[str, Any]]:
    key = sql.Identifier(MODELS[model].key)
    rows = conn.execute(
        sql.SQL(
            "SELECT COALESCE(l.{k}, r.{k})::text, l.version, r.version, {cl}, {cr} FROM {live} AS l"
            " FULL JOIN {replay} AS r ON r.{k} = l.{k}"
            " WHERE ({cl}) IS DISTINCT FROM ({cr}) AND NOT (l.version IS NOT NULL AND r.version IS NOT NULL AND l.version > r.version)"
            " ORDER BY 1 LIMIT {n}"
        ).format(
            k=key, cl=canonical(model, "l"), cr=canonical(model, "r"), live=rebuild.ident(live), replay=rebuild.ident(replay),
            n=sql.Literal(limit),
        )
    ).fetchall()
    out = []
    for entity, live_version, replay_version, live_row, replay_row in rows:
        if live_row is None:
            what = "missing from the live table"
        elif replay_row is None:
            what = "not in the replay"
        elif live_version is not None and replay_version is not None and live_version < replay_version:
            what = f"live row behind (v{live_version} < v{replay_version})"
        else:
            changed = sorted(k for k in set(live_row) | set(replay_row) if live_row.get(k) != replay_row.get(k))
            what = "columns differ: " + ", ".join(changed)
        out.append({"id": entity, "live_version": live_version, "replay_version": replay_version, "difference": what})
    return out


def compare(conn: psycopg.Connection[Any], model: str, live: str, replay: str, *, settle: float = 5.0, limit: int = 50) -> TableReport:
    deadline = time.monotonic() + settle
    while True:
        found = differences(conn, model, live, replay, limit=limit)
        lagging = [d for d in found if d["difference"].startswith("live row behind")]
        if not lagging or time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    live_rows, live_sum = checksum(conn, model, live)
    replay_rows, replay_sum = checksum(conn, model, replay)
    return TableReport(model, live_rows, replay_rows, live_sum, replay_sum, found)
