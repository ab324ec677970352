"""Replay: events/s rebuilding all three read models from the events table, beside raw COPY TO.

Backlog: BENCH_EVENTS (default 1,000,000) valid events written with one COPY: users (2 %)
registering and sometimes updating their profile, projects (1 %) created with members added,
and tasks with their lifecycle interleaved in time (submitted; started; succeeded, or failed
and retried, or cancelled), each stream in version order, some at schema version 1 of an
event type that has an upcaster.

Measured in the same run, on the same table:
- ``copy_to_events_per_s``: ``COPY events TO STDOUT`` (every column) read by psycopg into
  nothing: the rate the table leaves PostgreSQL at on this machine;
- ``replay_events_per_s``: ``taskstream replay`` (all read models, swap included) from its
  start to the swap's commit, events folded / wall time.
``ratio`` = replay / COPY TO. Goals: >= 100,000 events/s and ratio >= 0.5.
Also printed, as the machine is shared: the CPU the replay took per event, its Python's (all,
and the parts' by stage: read, fold, write) and, with the embedded server, PostgreSQL's.

BENCH_SHARDS sets the shards of the largest read model (default: one per core).
Uses DATABASE_URL and REDIS_URL if set (as the owner of the read models), else embedded
PostgreSQL (fsync on) and Valkey in a temporary folder. Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

EVENTS = int(os.environ.get("BENCH_EVENTS", 1_000_000))
GOAL = 100_000
GOAL_RATIO = 0.5


def _line(stream: str, version: int, type_: str, data: dict, schema_version: int = 1) -> str:
    body = json.dumps(data, separators=(",", ":")).replace("\\", "\\\\")
    return f"{stream}\t{version}\t{uuid.uuid4()}\t{type_}\t{schema_version}\t{body}\t{{}}\n"


def backlog(total: int, seed: int = 7) -> list[str]:
    """COPY text lines of ``total`` events (columns stream_id, version, event_id, type,
    schema_version, data, metadata), in the order they would have been written."""
    from schemas.catalog import registry

    rng = random.Random(seed)
    updated_version = registry().classes["project.updated"].SCHEMA_VERSION
    lines: list[str] = []
    versions: dict[str, int] = {}
    users: list[str] = []
    projects: list[str] = []
    live: list[tuple[str, str]] = []  # (task stream, status)

    def emit(stream: str, type_: str, data: dict, schema_version: int = 1) -> None:
        versions[stream] = versions.get(stream, 0) + 1
        lines.append(_line(stream, versions[stream], type_, data, schema_version))

    while len(lines) < total:
        roll = rng.random()
        if roll < 0.015 or not users:
            uid = str(uuid.uuid4())
            users.append(uid)
            emit(f"user-{uid}", "user.registered", {"user_id": uid, "email": f"{uid[:12]}@example.org", "display_name": f"User {uid[:6]}",
                                                   "password_hash": "$argon2id$bench", "role": "member"})  # fmt: skip
        elif roll < 0.02:
            uid = rng.choice(users)
            emit(f"user-{uid}", "user.profile_updated", {"user_id": uid, "display_name": f"Renamed {rng.randrange(1000)}"})
        elif roll < 0.03 or not projects:
            pid = str(uuid.uuid4())
            projects.append(pid)
            emit(f"project-{pid}", "project.created", {"project_id": pid, "owner_id": rng.choice(users), "name": f"P {pid[:8]}", "description": "bench"})
        elif roll < 0.035:
            pid = rng.choice(projects)
            emit(f"project-{pid}", "project.member_added", {"project_id": pid, "user_id": rng.choice(users), "role": "editor"})
        elif roll < 0.037:
            pid = rng.choice(projects)
            if updated_version > 1 and rng.random() < 0.5:  # stored at v1 (before the upcaster's change)
                emit(f"project-{pid}", "project.updated", {"project_id": pid, "name": None, "description": f"d{rng.randrange(99)}"}, 1)
            else:
                emit(f"project-{pid}", "project.updated", _updated(pid, f"d{rng.randrange(99)}", updated_version), updated_version)
        elif roll < 0.35 or len(live) < 50:
            tid = str(uuid.uuid4())
            emit(f"task-{tid}", "task.submitted", {"task_id": tid, "project_id": rng.choice(projects), "kind": "echo",
                                                  "payload": {"n": rng.randrange(10**6), "text": "hello"}, "priority": rng.randrange(10),
                                                  "max_attempts": 3, "timeout_seconds": 60})  # fmt: skip
            live.append((tid, "queued"))
        else:
            i = rng.randrange(len(live))
            tid, status = live[i]
            stream = f"task-{tid}"
            if status == "queued":
                if rng.random() < 0.05:
                    emit(stream, "task.cancelled", {"task_id": tid, "reason": "not needed"})
                    live[i] = live[-1]
                    live.pop()
                else:
                    emit(stream, "task.started", {"task_id": tid, "worker_id": "w1", "attempt": 1})
                    live[i] = (tid, "running")
            else:
                if rng.random() < 0.1:
                    emit(stream, "task.failed", {"task_id": tid, "attempt": 1, "error": "boom\tonce", "retry_scheduled": True})
                    live[i] = (tid, "queued")
                else:
                    emit(stream, "task.succeeded", {"task_id": tid, "attempt": 1, "result_ref": None, "summary": "ok", "result": {"v": 1}})
                    live[i] = live[-1]
                    live.pop()
    return lines[:total]


def _updated(pid: str, description: str, version: int) -> dict:
    if version == 1:
        return {"project_id": pid, "name": None, "description": description}
    return {"project_id": pid, "changes": {"description": description}}


def copy_to_rate(db_url: str) -> tuple[float, int]:
    """``COPY events TO STDOUT``, every column, read straight through libpq (the replay's own
    reading path, the fastest this client has) and thrown away: rows/s."""
    import psycopg
    from psycopg import pq

    with psycopg.connect(db_url, autocommit=True) as conn:
        pgconn = conn.pgconn
        started = time.perf_counter()
        result = pgconn.exec_(b"COPY events TO STDOUT")
        assert result.status == pq.ExecStatus.COPY_OUT
        rows = 0
        while pgconn.get_copy_data(0)[0] >= 0:
            rows += 1
        while pgconn.get_result() is not None:
            pass
        return rows / (time.perf_counter() - started), rows


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the replay's part processes)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> int:
    import psycopg

    from _servers import cpu_seconds
    from projections.replay import Replay, Request, redis_invalidator
    from taskstream import embedded

    folder = Path(tempfile.mkdtemp(prefix="taskstream-bench-replay-"))
    started: list[embedded.ServerProcess] = []
    try:
        pg_pid = None
        if os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL"):
            from taskstream.migrate import upgrade

            db_url, redis_url = os.environ["DATABASE_URL"], os.environ["REDIS_URL"]
            upgrade(db_url)
        else:
            pg = embedded.start_postgres(folder / "pg", embedded.free_port(), fsync=True)
            started.append(pg)
            pg_pid = pg.process.pid
            valkey = embedded.start_valkey(folder / "valkey", embedded.free_port())
            started.append(valkey)
            db_url, redis_url = pg.url, valkey.url
            from taskstream.migrate import upgrade

            upgrade(db_url)
        generating = time.perf_counter()
        lines = backlog(EVENTS)
        generated = time.perf_counter() - generating
        with psycopg.connect(db_url, autocommit=True) as conn:
            before = conn.execute("SELECT count(*) FROM events").fetchone()[0]
            writing = time.perf_counter()
            with conn.cursor() as cur, cur.copy(
                "COPY events (stream_id, version, event_id, type, schema_version, data, metadata) FROM STDIN"
            ) as copy:
                for start in range(0, len(lines), 10_000):
                    copy.write("".join(lines[start : start + 10_000]))
            written = time.perf_counter() - writing
            conn.execute("VACUUM ANALYZE events")
            total = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        del lines
        copy_rate, copied = copy_to_rate(db_url)
        replay = Replay(db_url, Request(shards=int(os.environ.get("BENCH_SHARDS", 0))), invalidate=redis_invalidator(redis_url))
        # PostgreSQL's CPU: the embedded postmaster's, with its backends' (None for an external server).
        cpu_before, pg_before = _cpu(), None if pg_pid is None else cpu_seconds(pg_pid)
        result = replay.run()
        cpu = _cpu() - cpu_before
        pg_after = None if pg_pid is None else cpu_seconds(pg_pid)
        pg_cpu = None if pg_before is None or pg_after is None else pg_after - pg_before
        replay_rate = result.events / result.seconds
        copy_rate_again, _ = copy_to_rate(db_url)  # the baseline again, after: the machine is shared
        with psycopg.connect(db_url, autocommit=True) as conn:
            rows = {m: conn.execute(f"SELECT count(*) FROM {m}").fetchone()[0] for m in ("users", "projects", "tasks")}
    finally:
        for server in reversed(started):
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    baseline = max(copy_rate, copy_rate_again)
    print(json.dumps({
        "bench": "replay",
        "unit": "events/s",
        "events": total,
        "events_before": before,
        "replay_events_per_s": round(replay_rate, 1),
        "replay_seconds": round(result.seconds, 2),
        "swap_locked_seconds": round(result.locked_seconds, 3),
        "phases_seconds": {k: round(v, 2) for k, v in replay.phases.items()},
        "copy_to_events_per_s": round(baseline, 1),
        "copy_to_runs_events_per_s": [round(copy_rate, 1), round(copy_rate_again, 1)],
        "ratio": round(replay_rate / baseline, 3),
        "goal": f"replay_events_per_s >= {GOAL} and ratio >= {GOAL_RATIO}",
        "goal_met": replay_rate >= GOAL and replay_rate / baseline >= GOAL_RATIO,
        "replay_python_cpu_seconds": round(cpu, 2),
        "replay_events_per_python_cpu_s": round(result.events / cpu, 1) if cpu else None,
        "python_cpu_us_per_event": {k: round(v / result.events * 1e6, 2) for k, v in replay.part_cpu.items()} | {
            "all": round(cpu / result.events * 1e6, 2)},
        "postgres_cpu_us_per_event": round(pg_cpu / result.events * 1e6, 2) if pg_cpu is not None else None,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "rows": rows,
        "failures": len(result.failures),
        "status": result.status,
        "seconds_generating": round(generated, 2),
        "seconds_copy_in": round(written, 2),
        "copied_rows": copied,
        "cpus": os.cpu_count(),
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
