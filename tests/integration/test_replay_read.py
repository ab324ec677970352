"""How a replay reads the events table (``rebuild.read_events``), over a real PostgreSQL: blocks
of raw lines built by PostgreSQL hold exactly the events COPY text gives, in each stream's
order, and a value that would shift the fields (a tab or newline in a stream id) makes the
range come back as escaped COPY text instead, whose fold stops that stream and nothing else.
"""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest

from projections import bulk, rebuild
from projections.catalog import MODELS
from projections.replay import connect
from schemas.catalog import registry
from tests.conftest import create_database


def _copy_line(stream: str, version: int, type_: str, data: dict[str, object]) -> str:
    body = json.dumps(data).replace("\\", "\\\\")
    return f"{bulk.escape(stream)}\t{version}\t{uuid.uuid4()}\t{type_}\t1\t{body}\t{{}}\n"


def _task_events(tid: str, project: str) -> list[tuple[str, dict[str, object]]]:
    return [
        ("task.submitted", {"task_id": tid, "project_id": project, "kind": "echo", "payload": {"text": "tab\there, \\ and \"quotes\""},
                            "priority": 1, "max_attempts": 2, "timeout_seconds": 30}),
        ("task.started", {"task_id": tid, "worker_id": "w\\1", "attempt": 1}),
        ("task.failed", {"task_id": tid, "attempt": 1, "error": "line\nbreak", "retry_scheduled": True}),
        ("task.started", {"task_id": tid, "worker_id": "w2", "attempt": 2}),
        ("task.succeeded", {"task_id": tid, "attempt": 2, "result_ref": None, "summary": "é ok", "result": {"v": [1, 2]}}),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def url(database_urls: dict[str, str]) -> str:
    app = create_database(database_urls)
    project = str(uuid.uuid4())
    tasks = [str(uuid.uuid4()) for _ in range(7)]
    lines = []
    for step in range(5):  # the streams interleaved, as they are written
        for tid in tasks:
            type_, data = _task_events(tid, project)[step]
            lines.append(_copy_line(f"task-{tid}", step + 1, type_, data))
    lines.insert(20, _copy_line("task-odd\tone", 1, "task.submitted", {"task_id": "odd"}))  # a tab in a stream id
    with psycopg.connect(app, autocommit=True) as conn:
        with conn.cursor() as cur, cur.copy("COPY events (stream_id, version, event_id, type, schema_version, data, metadata) FROM STDIN") as copy:
            copy.write("".join(lines))
    return app


def _events(text: str) -> list[tuple[object, ...]]:
    return [(e.global_position, e.stream, e.version, e.type, e.schema_version, e.data, e.recorded_at) for e in bulk.parse_events(text)]


def test_blocks_hold_the_events_copy_text_gives_and_a_shifting_value_falls_back_to_copy_text(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rebuild, "BLOCK_POSITIONS", 4)  # many blocks, some empty
    with connect(url) as conn:
        (odd,) = conn.execute("SELECT global_position FROM events WHERE stream_id = 'task-odd' || chr(9) || 'one'").fetchone()  # type: ignore[misc]
        (head,) = conn.execute("SELECT max(global_position) FROM events").fetchone()  # type: ignore[misc]
        before = rebuild.read_events(conn, ["task"], 0, odd - 1)
        assert not before.escaped and len(before.blocks) > 2
        assert _events("".join(bulk.escape_lines(block) + "\n" for block in before)) == _events(rebuild.copy_events(conn, ["task"], 0, odd - 1))
        whole = rebuild.read_events(conn, ["task"], 0, head)
        assert whole.escaped
        assert _events("".join(whole)) == _events(rebuild.copy_events(conn, ["task"], 0, head))
        shard = rebuild.read_events(conn, ["task"], odd, head, shard=1, shards=2)
        assert _events("".join(bulk.escape_lines(block) + "\n" for block in shard)) == _events(
            rebuild.copy_events(conn, ["task"], odd, head, shard=1, shards=2)
        )


def test_the_fold_of_blocks_equals_the_fold_of_the_projectors_over_copy_text(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rebuild, "BLOCK_POSITIONS", 3)
    model = MODELS["tasks"]
    with connect(url) as conn:
        (head,) = conn.execute("SELECT max(global_position) FROM events").fetchone()  # type: ignore[misc]
        reference = bulk.Fold(model, registry())
        reference.apply(bulk.parse_events(rebuild.copy_events(conn, ["task"], 0, head)))
        fast = bulk.Fold(model, registry())
        for after in range(0, head, 10):  # ranges as a part reads them: some in blocks, one as COPY text
            read = rebuild.read_events(conn, ["task"], after, min(head, after + 10))
            for block in read:
                fast.apply_text(block, escaped=read.escaped)
    assert len(reference.rows) == 7 and all(row["version"] == 5 and row["status"] == "succeeded" for row in reference.rows.values())
    assert fast.rows == reference.rows
    assert list(fast.failed) == list(reference.failed) == ["task-odd\tone"]
    assert fast.failed["task-odd\tone"].error == reference.failed["task-odd\tone"].error
