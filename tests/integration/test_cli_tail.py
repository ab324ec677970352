"""``taskstream tail`` as an operator runs it: a real process over real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from event_store.postgres import PostgresEventStore
from schemas.envelope import ANY, NewEvent

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskstream.cli", "tail", *args], capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url, "COLUMNS": "200"},
    )  # fmt: skip


async def write(store: PostgresEventStore, tag: str) -> dict[str, str]:
    """A registration (with a password hash), an email claim and a task, tagged to be found."""
    user, task = uuid.uuid4(), uuid.uuid4()
    streams = {"user": f"user-{user}", "user_email": f"user_email-{tag}{user.hex}", "task": f"task-{task}"}
    await store.append(streams["user"], ANY, [NewEvent("user.registered", {"user_id": str(user), "tag": tag, "password_hash": "$argon2id$SECRET"})])
    await store.append(streams["user_email"], ANY, [NewEvent("user_email.claimed", {"user_id": str(user), "tag": tag})])
    await store.append(streams["task"], ANY, [NewEvent("task.submitted", {"task_id": str(task), "tag": tag})])
    return streams


async def test_table_and_json_filtered_by_category_and_type_without_private_fields(store: PostgresEventStore, database_url: str) -> None:
    start = await store.head_position()
    tag = uuid.uuid4().hex[:8]
    streams = await write(store, tag)
    table = await asyncio.to_thread(run, "--from-position", str(start), "--category", "user,task", "--format", "table", database_url=database_url)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["POSITION", "RECORDED", "(UTC)"]
    mine = [line for line in lines[1:] if tag in line]
    assert [line.split()[3] for line in mine] == ["user.registered", "task.submitted"]
    assert streams["user"] in mine[0] and streams["task"] in mine[1]
    assert "SECRET" not in table.stdout and "password_hash" not in table.stdout
    assert not any(streams["user_email"] in line for line in lines)

    typed = await asyncio.to_thread(run, "--after", str(start), "--type", "user.registered", "--format", "json", database_url=database_url)
    printed = [json.loads(line) for line in typed.stdout.splitlines()]
    assert {e["type"] for e in printed} == {"user.registered"} and any(e["data"].get("tag") == tag for e in printed)
    assert all("password_hash" not in e["data"] for e in printed) and all(e["global_position"] > start for e in printed)

    bad = await asyncio.to_thread(run, "--category", "nope", database_url=database_url)
    assert bad.returncode == 2 and "unknown categories nope" in bad.stderr


async def test_follow_prints_what_is_written_meanwhile_then_stops_on_ctrl_c(store: PostgresEventStore, database_url: str) -> None:
    start = await store.head_position()
    tag = uuid.uuid4().hex[:8]
    before = await write(store, tag)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "taskstream.cli", "tail", "--follow", "--from-position", str(start), "--category", "task",
        "--format", "json", cwd=ROOT, env={**os.environ, "DATABASE_URL": database_url},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        seen: list[dict[str, object]] = []
        after: list[dict[str, str]] = []
        async with asyncio.timeout(60):
            while True:
                event = json.loads(await proc.stdout.readline())
                assert event["stream"].startswith("task-")
                seen.append(event)
                if event["stream"] == before["task"]:
                    after = [await write(store, tag) for _ in range(3)]  # live now: these come through the tail
                if after and event["stream"] == after[-1]["task"]:
                    break
        mine = [e["stream"] for e in seen if e["data"].get("tag") == tag]  # type: ignore[union-attr]
        assert mine == [before["task"], *(s["task"] for s in after)]
        positions = [e["global_position"] for e in seen]
        assert positions == sorted(set(positions))  # in order, none twice
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
