"""``taskstream replay`` and ``taskstream verify`` as an operator runs them: real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from taskstream import dbroles
from tests.conftest import create_database
from tests.integration.test_replay import write_backlog

ROOT = Path(__file__).resolve().parents[2]


def taskstream(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskstream.cli", *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, env={**os.environ, **env},
    )  # fmt: skip


def _env(database_urls: dict[str, str], redis_url: str) -> tuple[dict[str, str], str]:
    app = create_database(database_urls)
    owner = app if database_urls["admin"] == database_urls["app"] else dbroles.role_url(app, dbroles.OWNER_ROLE)
    return {"DATABASE_URL": app, "MIGRATION_DATABASE_URL": owner, "REDIS_URL": redis_url, "LOG_FORMAT": "text"}, owner


def test_replay_swaps_verify_agrees_then_names_a_tampered_row(database_urls: dict[str, str], redis_url: str) -> None:
    env, owner = _env(database_urls, redis_url)
    write_backlog(env["DATABASE_URL"], 3000, seed=3)
    done = taskstream("replay", env=env)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["status"] == "swapped" and summary["events"] == 3000 and not summary["failures"]
    assert "events/s" in done.stderr  # plain progress lines when not on a terminal
    done = taskstream("verify", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    reports = [json.loads(line) for line in done.stdout.splitlines()]
    assert {r["model"] for r in reports} == {"users", "projects", "tasks"} and all(r["equal"] for r in reports)
    with psycopg.connect(owner, autocommit=True) as conn:
        (tampered,) = conn.execute("UPDATE tasks SET summary = 'tampered' WHERE task_id = (SELECT task_id FROM tasks ORDER BY task_id LIMIT 1) RETURNING task_id::text").fetchone()  # type: ignore[misc]
        # verify leaves nothing behind: no table of its replay, its run abandoned
        assert conn.execute("SELECT count(*) FROM pg_class WHERE relname LIKE '%%_rb_r%%' AND relkind = 'r'").fetchone() == (0,)
    done = taskstream("verify", "--projection", "tasks", "--settle", "0", env=env)
    assert done.returncode == 1
    (report,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert report["differences"] == [{"id": tampered, "live_version": report["differences"][0]["live_version"],
                                      "replay_version": report["differences"][0]["live_version"], "difference": "columns differ: summary"}]  # fmt: skip


def test_replay_until_a_position_builds_beside_the_live_tables_without_swapping(database_urls: dict[str, str], redis_url: str) -> None:
    env, owner = _env(database_urls, redis_url)
    write_backlog(env["DATABASE_URL"], 2000, seed=4)
    done = taskstream("replay", "--projection", "users", "--until-position", "1000", env=env)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["status"] == "built" and summary["position"] == 1000
    table = summary["tables"]["users"]
    assert table in done.stderr and "--discard" in done.stderr
    with psycopg.connect(owner, autocommit=True) as conn:
        (built, beyond) = conn.execute(f"SELECT count(*), count(*) FILTER (WHERE global_position > 1000) FROM {table}").fetchone()  # type: ignore[misc]
        (expected,) = conn.execute("SELECT count(*) FROM events WHERE type = 'user.registered' AND global_position <= 1000").fetchone()  # type: ignore[misc]
        assert (built, beyond) == (expected, 0)
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (0,)  # the live table is untouched
    done = taskstream("replay", "--discard", summary["run"], env=env)
    assert done.returncode == 0, done.stderr
    with psycopg.connect(owner, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass(%s)", (table,)).fetchone() == (None,)


def test_sigterm_stops_at_a_checkpoint_and_a_second_run_continues(database_urls: dict[str, str], redis_url: str) -> None:
    env, owner = _env(database_urls, redis_url)
    write_backlog(env["DATABASE_URL"], 20000, seed=6)
    proc = subprocess.Popen([sys.executable, "-m", "taskstream.cli", "replay", "--no-parallel"], cwd=ROOT, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        with psycopg.connect(owner, autocommit=True) as conn:
            while time.monotonic() < deadline:  # wait until the run exists, then stop it
                if conn.execute("SELECT count(*) FROM replay_runs").fetchone() != (0,):
                    break
                time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    summary = json.loads(out.splitlines()[-1])
    if proc.returncode == 130:  # stopped before the end (it may also have finished first: machines vary)
        assert summary["status"] == "interrupted" and "run the same command again" in err
        done = taskstream("replay", "--no-parallel", env=env)
        assert done.returncode == 0, done.stderr
        again = json.loads(done.stdout.splitlines()[-1])
        assert again["resumed"] and again["run"] == summary["run"] and again["status"] == "swapped"
    else:
        assert proc.returncode == 0 and summary["status"] == "swapped", err
    done = taskstream("verify", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
