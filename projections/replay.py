"""``taskstream replay``: rebuild read models from the events table alone, then swap them in.

Guarantees
----------
- **Same rows as the live projector.** Events are folded with the live projector's own pure
  steps (``apply`` is those steps stamping a copy of the row; the replay updates one working
  row per stream in place, which drops only copies no one sees: ``projections.model``), through
  the same upcasters, in each stream's version order. An event ``apply`` refuses stops its
  stream there, as the live projector parks it: the row stays as it was, the failure is
  reported and recorded in ``projection_failures`` at the swap.
- **Nothing missed, nothing applied twice.** Parts read ``(position, target]`` ranges in global
  order; positions are handed out in commit order (``event_store.postgres``), so a range read
  once the target is visible is complete. The tail written during the build is folded in
  catch-up rounds, and the last one inside the swap's transaction, after the lock.
- **Blue/green swap, atomic.** Rows go into ``<model>_rb_<run>`` tables while the live ones keep
  serving. The swap is one transaction: ``LOCK TABLE … IN ACCESS EXCLUSIVE MODE`` on the live
  tables involved (in the projectors' lock order: tasks, projects, users), fold the last tail,
  recount the projects' task counts from the tasks table that goes live, rename live -> old and
  new -> live (indexes too), commit. A reader sees the old table or the new one, never a table
  being built; it waits for the lock at most as long as the last tail takes. The old tables are
  dropped right after.
- **The live projector carries on.** Its upsert is guarded by the row's version: after the swap
  it finds rows at the version of the last event the replay folded, drops what it redelivers
  at or below it and applies what comes after (it reads the rows in the transaction that
  writes them, and a statement waiting on the lock resolves the table name again once it gets
  it). The counts it moves by difference start from the recount, done under the lock.
- **Interruptible, resumable.** Each part writes its rows and its position (``replay_progress``)
  in one transaction per checkpoint; SIGINT/SIGTERM stops after the current chunk's
  checkpoint. Running the same command again continues the newest unfinished run.

Cache: the Redis entries ``ts:rm:<model>:<id>`` are version-guarded, so a rebuilt row at the
same version but with different content (a projector whose logic changed) would never replace
a cached one. After the swap commits, every entry of the swapped models is deleted, and deleted
again ``cache_grace`` seconds later (a gateway that read the old table just before the swap may
fill its miss just after the first delete). Each delete reaches the gateways' near-caches
through Redis client tracking. Project rows come out of a swap with ``counts_revision`` one
above the live one, so their revision outranks whatever was cached.

``--until-position`` / ``--until-time``: the read models as of that point are built beside the
live ones and kept (``status = built``), not swapped: the live tables always reflect every
event, and going back in time is an inspection, not an operation on what users read. Their
names are printed; ``taskstream replay --discard RUN`` drops them.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue as queue_mod
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

import psycopg
from psycopg.types.json import Jsonb

from projections import bulk, rebuild
from projections.catalog import MODELS
from projections.model import ReadModel, Row
from projections.replay_parts import Part, build_part, connect, part_process, parts_named
from schemas.catalog import registry

log = logging.getLogger("taskstream.replay")

REPLAY_LOCK_KEY = 7_306_010_008  # session advisory lock: one replay per database at a time


class ReplayBusy(RuntimeError):
    pass


class Progress(Protocol):
    def start(self, total: int, done: int = 0) -> None: ...
    def advance(self, events: int) -> None: ...
    def note(self, message: str) -> None: ...
    def close(self) -> None: ...


class NoProgress:
    def start(self, total: int, done: int = 0) -> None:
        pass

    def advance(self, events: int) -> None:
        pass

    def note(self, message: str) -> None:
        log.info("%s", message)

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class Request:
    models: tuple[str, ...] = tuple(MODELS)
    until_position: int | None = None
    until_time: datetime | None = None
    parallel: bool = True  # one process per part
    shards: int = 0  # parts the largest model is folded in (0: one per core)
    chunk_span: int = 250_000  # positions read per COPY
    checkpoint_events: int = 500_000  # events folded between two checkpoints of a part
    catch_up_until: int = 20_000  # a tail shorter than this is folded under the lock
    lock_timeout: float = 5.0
    swap_attempts: int = 5
    cache_grace: float = 2.0

    @property
    def swap(self) -> bool:
        return self.until_position is None and self.until_time is None


@dataclass
class Result:
    run_id: str
    status: str  # swapped | built | interrupted
    tables: dict[str, str]
    position: int
    events: int
    seconds: float
    resumed: bool
    failures: list[bulk.Failure] = field(default_factory=list)
    locked_seconds: float = 0.0  # how long the swap held the live tables locked (readers waited)


# --- the run ----------------------------------------------------------------------------------


class Replay:
    def __init__(self, url: str, request: Request, *, progress: Progress | None = None,
                 invalidate: Callable[[Sequence[str]], None] | None = None, stopped: Callable[[], bool] = lambda: False) -> None:  # fmt: skip
        for name in request.models:
            if name not in MODELS:
                raise ValueError(f"unknown read model {name!r}")
        self.url = url
        self.request = request
        self.progress = progress or NoProgress()
        self.invalidate = invalidate
        self.stopped = stopped
        self.models: list[ReadModel] = [MODELS[n] for n in rebuild.LOCK_ORDER if n in request.models]
        self.failures: dict[str, bulk.Failure] = {}
        self.locked_seconds = 0.0
        self.phases: dict[str, float] = {}  # seconds per phase of the last run
        self.part_cpu: dict[str, float] = {}  # CPU seconds of the parts' Python, by stage (read, fold, write)

    # The parts: the model with the most events is split in shards (folded in parallel).
    def parts(self, conn: psycopg.Connection[Any]) -> list[Part]:
        shards = self.request.shards or (os.cpu_count() or 1)
        if not self.request.parallel or shards <= 1 or len(self.models) == 0:
            return [Part(m.name) for m in self.models]
        counts = {
            cat: n for cat, n in conn.execute(
                "SELECT category, count(*) FROM events WHERE category = ANY(%s) GROUP BY category", ([m.category for m in self.models],)
            ).fetchall()
        }  # fmt: skip
        largest = max(self.models, key=lambda m: counts.get(m.category, 0))
        out: list[Part] = []
        for m in self.models:
            out += [Part(m.name, s, shards) for s in range(shards)] if m is largest else [Part(m.name)]
        return out

    def run(self) -> Result:
        """One replay at a time per database (a session advisory lock, held for the run): a
        second one would resume the same run's parts under the first one's feet."""
        with connect(self.url) as guard:
            if not guard.execute("SELECT pg_try_advisory_lock(%s)", (REPLAY_LOCK_KEY,)).fetchone()[0]:  # type: ignore[index]
                raise ReplayBusy("another taskstream replay (or verify) is running on this database")
            return self._run()

    def _run(self) -> Result:
        started = time.monotonic()
        with connect(self.url) as conn:
            run_id, tables, resumed = self._start_or_resume(conn)
            target = int(conn.execute("SELECT target_position FROM replay_runs WHERE run_id = %s", (run_id,)).fetchone()[0])  # type: ignore[index]
            progress_rows = dict(conn.execute("SELECT part, position FROM replay_progress WHERE run_id = %s", (run_id,)).fetchall())
            parts = parts_named(progress_rows)  # as the run was planned, whatever the machine now
            starts = {p.name: int(progress_rows[p.name]) for p in parts}
            bulk_target = max([target, *starts.values()])
            total = self._count(conn, [m.category for m in self.models], min(starts.values(), default=0), bulk_target)
        self.progress.note(f"replay {run_id}: {', '.join(m.name for m in self.models)} up to position {bulk_target}"
                           + (" (resumed)" if resumed else ""))  # fmt: skip
        self.progress.start(total)
        self.phases["plan"] = time.monotonic() - started
        events = self._build_parts(run_id, tables, parts, starts, bulk_target)
        self.phases["fold"] = time.monotonic() - started - self.phases["plan"]
        if self.stopped():
            return self._interrupted(run_id, tables, started, events, resumed)
        with connect(self.url) as conn:
            for model in self.models:
                rebuild.finish_table(conn, model.name, tables[model.name], run_id, model.key)
            self.phases["indexes"] = time.monotonic() - started - self.phases["plan"] - self.phases["fold"]
            if not self.request.swap:
                if "projects" in tables and "tasks" in tables:
                    rebuild.recount(conn, tables["projects"], tables["tasks"])
                conn.execute("UPDATE replay_runs SET status = 'built', updated_at = now(), finished_at = now() WHERE run_id = %s", (run_id,))
                self.progress.close()
                return Result(run_id, "built", tables, bulk_target, events, time.monotonic() - started, resumed, list(self.failures.values()))
            position = bulk_target
            for _ in range(20):  # catch up with what was written meanwhile, outside the lock
                if self.stopped():
                    return self._interrupted(run_id, tables, started, events, resumed)
                head = self._head(conn)
                if head - position <= self.request.catch_up_until:
                    break
                with conn.transaction():
                    events += self._fold_tail(conn, tables, position, head)
                    conn.execute("UPDATE replay_runs SET target_position = %s, updated_at = now() WHERE run_id = %s", (head, run_id))
                position = head
            swap_started = time.monotonic()
            self.phases["catch_up"] = swap_started - started - sum(self.phases.values())
            position, tail = self._swap(conn, run_id, tables, position)
            self.phases["swap"] = time.monotonic() - swap_started
            events += tail
        seconds = time.monotonic() - started  # to the swap's commit
        self.progress.close()
        self._after_swap(tables, run_id)
        return Result(run_id, "swapped", tables, position, events, seconds, resumed, list(self.failures.values()), self.locked_seconds)

    def _interrupted(self, run_id: str, tables: dict[str, str], started: float, events: int, resumed: bool) -> Result:
        self.progress.close()
        with connect(self.url) as conn:
            position = conn.execute("SELECT COALESCE(min(position), 0) FROM replay_progress WHERE run_id = %s", (run_id,)).fetchone()[0]  # type: ignore[index]
        return Result(run_id, "interrupted", tables, int(position), events, time.monotonic() - started, resumed, list(self.failures.values()))

    # --- planning ---------------------------------------------------------------------------

    def _until(self, conn: psycopg.Connection[Any]) -> int:
        if self.request.until_position is not None:
            return min(self.request.until_position, self._head(conn))
        if self.request.until_time is not None:
            row = conn.execute(
                "SELECT COALESCE(max(global_position), 0) FROM events WHERE recorded_at <= %s", (self.request.until_time,)
            ).fetchone()
            return int(row[0])  # type: ignore[index]
        return self._head(conn)

    @staticmethod
    def _head(conn: psycopg.Connection[Any]) -> int:
        return int(conn.execute("SELECT COALESCE(max(global_position), 0) FROM events").fetchone()[0])  # type: ignore[index]

    @staticmethod
    def _count(conn: psycopg.Connection[Any], categories: list[str], after: int, until: int) -> int:
        row = conn.execute(
            "SELECT count(*) FROM events WHERE category = ANY(%s) AND global_position > %s AND global_position <= %s",
            (categories, after, until),
        ).fetchone()
        return int(row[0])  # type: ignore[index]

    def _start_or_resume(self, conn: psycopg.Connection[Any]) -> tuple[str, dict[str, str], bool]:
        names = [m.name for m in self.models]
        until = None if self.request.swap else self._until(conn)
        found = conn.execute(
            "SELECT run_id, tables FROM replay_runs WHERE status = 'building' AND models = %s AND swap = %s"
            " AND until_position IS NOT DISTINCT FROM %s ORDER BY started_at DESC LIMIT 1",
            (names, self.request.swap, until),
        ).fetchone()
        if found is not None and all(rebuild.table_exists(conn, t) for t in found[1].values()):
            return found[0], dict(found[1]), True
        run_id = "r" + datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S") + secrets.token_hex(2)
        tables = {m.name: f"{m.name}_rb_{run_id}" for m in self.models}
        target = until if until is not None else self._head(conn)
        with conn.transaction():
            conn.execute(
                "INSERT INTO replay_runs (run_id, models, until_position, swap, tables, status, target_position)"
                " VALUES (%s, %s, %s, %s, %s, 'building', %s)",
                (run_id, names, until, self.request.swap, Jsonb(tables), target),
            )
            for model in self.models:
                rebuild.create_building_table(conn, model.name, tables[model.name], model.key)
            for part in self.parts(conn):
                rebuild.set_progress(conn, run_id, part.name, 0, 0)
        return run_id, tables, False

    # --- the bulk ---------------------------------------------------------------------------

    def _build_parts(self, run_id: str, tables: Mapping[str, str], parts: list[Part], starts: Mapping[str, int], target: int) -> int:
        req = self.request
        todo = [p for p in parts if starts[p.name] < target]
        events = 0
        if not req.parallel or len(todo) <= 1:
            for part in todo:
                if self.stopped():
                    break

                def report(_name: str, n: int) -> None:
                    nonlocal events
                    events += n
                    self.progress.advance(n)

                _, failures = build_part(
                    self.url, run_id, tables[part.model], part, starts[part.name], target, chunk_span=req.chunk_span,
                    checkpoint_events=req.checkpoint_events, report=report, stopped=self.stopped, cpu=self.part_cpu,
                )  # fmt: skip
                self._add_failures(failures)
            return events
        # fork when nothing else runs in this process (no import to pay again in each part),
        # spawn otherwise (a thread may hold a lock the child would inherit held).
        import threading

        ctx = multiprocessing.get_context("fork" if threading.active_count() == 1 else "spawn")
        reports = ctx.Queue()
        stop = ctx.Event()
        procs = [
            ctx.Process(target=part_process, name=f"replay-{p.name}", daemon=True,
                        args=(self.url, run_id, tables[p.model], p, starts[p.name], target, req.chunk_span, req.checkpoint_events, reports, stop))
            for p in todo
        ]  # fmt: skip
        for proc in procs:
            proc.start()
        running, errors = {p.name for p in todo}, []
        try:
            while running:
                if self.stopped():
                    stop.set()
                try:
                    message = reports.get(timeout=0.2)
                except queue_mod.Empty:
                    dead = [p for p, part in zip(procs, todo, strict=True) if part.name in running and not p.is_alive() and p.exitcode]
                    if dead and reports.empty():
                        raise RuntimeError(f"replay part {dead[0].name} exited with code {dead[0].exitcode}")
                    continue
                if message[0] == "events":
                    events += message[2]
                    self.progress.advance(message[2])
                elif message[0] == "done":
                    running.discard(message[1])
                    self._add_failures(message[3])
                    for stage, seconds in message[4].items():
                        self.part_cpu[stage] = self.part_cpu.get(stage, 0.0) + seconds
                else:
                    running.discard(message[1])
                    errors.append(f"{message[1]}: {message[2]}")
                    stop.set()
        finally:
            stop.set()
            for proc in procs:
                proc.join(timeout=60)
                if proc.is_alive():
                    proc.kill()
        if errors:
            raise RuntimeError("replay failed: " + "; ".join(errors))
        return events

    def _add_failures(self, failures: Sequence[bulk.Failure]) -> None:
        for failure in failures:
            self.failures.setdefault(failure.stream, failure)

    # --- the tail and the swap --------------------------------------------------------------

    def _fold_tail(self, conn: psycopg.Connection[Any], tables: Mapping[str, str], after: int, until: int) -> int:
        """Fold (after, until] into the building tables, in the caller's transaction: one read of
        every model's events (inside the swap's lock, one query rather than one per model), its
        lines split by category (``events.category``: the stream id up to its first ``-``), each
        stream's still in version order."""
        read = rebuild.read_events(conn, [m.category for m in self.models], after, until)
        lines: dict[str, list[str]] = {m.category: [] for m in self.models}
        keys: dict[str, set[str]] = {m.category: set() for m in self.models}
        for text in read:
            for line in text.split("\n"):
                if line:
                    category, _, key = line.split("\t", 2)[1].partition("-")
                    lines[category].append(line)
                    keys[category].add(key)
        total = 0
        for model in self.models:
            if not lines[model.category]:
                continue
            valid = [k for k in keys[model.category] if _is_uuid(k)]
            rows = rebuild.load_rows(conn, model, tables[model.name], keys=valid)
            fold = bulk.Fold(model, registry(), rows=rows, position=after)
            fold.failed = {s: f for s, f in self.failures.items() if s.startswith(model.category + "-")}
            total += fold.apply_text("\n".join(lines[model.category]), escaped=read.escaped)
            writer = rebuild.RowWriter(conn, model, tables[model.name])
            writer.written = set(rows)
            writer.write([(s, fold.rows[s]) for s in sorted(fold.dirty)])
            self._add_failures(list(fold.failed.values()))
        self.progress.advance(total)
        return total

    def _swap(self, conn: psycopg.Connection[Any], run_id: str, tables: Mapping[str, str], position: int) -> tuple[int, int]:
        names = {m.name for m in self.models}
        involved = set(names)
        if names & {"tasks", "projects"}:
            involved |= {"tasks", "projects"}  # the counts: projects' rows from tasks' rows
        lock = [t for t in rebuild.LOCK_ORDER if t in involved]
        for attempt in range(1, self.request.swap_attempts + 1):
            try:
                with conn.transaction():
                    conn.execute(f"SET LOCAL lock_timeout = '{int(self.request.lock_timeout * 1000)}ms'")
                    conn.execute(f"LOCK TABLE {', '.join(lock)} IN ACCESS EXCLUSIVE MODE")
                    locked_at = time.monotonic()
                    head = self._head(conn)
                    tail = self._fold_tail(conn, tables, position, head)
                    self._recount(conn, tables, names, run_id)
                    self._record_failures(conn)
                    for model in self.models:
                        rebuild.swap_tables(conn, model.name, tables[model.name], f"{model.name}_old_{run_id}", run_id)
                    conn.execute(
                        "UPDATE replay_runs SET status = 'swapped', target_position = %s, updated_at = now(), finished_at = now()"
                        " WHERE run_id = %s",
                        (head, run_id),
                    )
                self.locked_seconds = time.monotonic() - locked_at
                return head, tail
            except psycopg.errors.LockNotAvailable:
                self.progress.note(f"swap: the live tables stayed busy for {self.request.lock_timeout} s (attempt {attempt}); trying again")
                time.sleep(min(5.0, 0.5 * attempt))
        raise RuntimeError(f"could not lock {', '.join(lock)} for the swap after {self.request.swap_attempts} attempts")

    def _recount(self, conn: psycopg.Connection[Any], tables: Mapping[str, str], names: set[str], run_id: str) -> None:
        if not names & {"tasks", "projects"}:
            return
        projects = tables.get("projects", "projects")
        rebuild.recount(conn, projects, tables.get("tasks", "tasks"))
        if "projects" in names:  # a revision above the live one: what was cached is outranked
            conn.execute(
                f"UPDATE {projects} AS n SET counts_revision = o.counts_revision + 1 FROM projects AS o"
                " WHERE o.project_id = n.project_id"
            )
        else:
            conn.execute("UPDATE projects SET counts_revision = counts_revision + 1")

    def _record_failures(self, conn: psycopg.Connection[Any]) -> None:
        """The live projector's parked streams become the replay's: the streams it applied are
        resolved, those it stopped are parked (so the projector leaves them waiting)."""
        for model in self.models:
            conn.execute(
                "UPDATE projection_failures SET resolved_at = now() WHERE projection = %s AND resolved_at IS NULL", (model.name,)
            )
        for failure in self.failures.values():
            model = next(m for m in self.models if failure.stream.startswith(m.category + "-"))
            conn.execute(
                "INSERT INTO projection_failures (projection, stream_id, version, event_id, global_position, type, error, attempts)"
                " SELECT %s, %s, %s, event_id, %s, %s, %s, 1 FROM events WHERE global_position = %s"
                " ON CONFLICT (projection, stream_id, version) DO UPDATE SET error = EXCLUDED.error,"
                " last_failed_at = now(), resolved_at = NULL",
                (model.name, failure.stream, failure.version, failure.global_position, failure.type,
                 ("replay: " + failure.error)[:4000], failure.global_position),
            )  # fmt: skip

    def _after_swap(self, tables: Mapping[str, str], run_id: str) -> None:
        if self.invalidate is not None:
            self.invalidate([m.name for m in self.models])
        with connect(self.url) as conn:
            for model in self.models:
                old = f"{model.name}_old_{run_id}"
                try:
                    with conn.transaction():  # a reader still in a transaction on it: do not wait forever
                        conn.execute("SET LOCAL lock_timeout = '30s'")
                        conn.execute(f"DROP TABLE IF EXISTS {rebuild.ident(old).as_string(conn)}")
                except psycopg.Error as exc:
                    self.progress.note(f"kept {old}: it cannot be dropped ({exc}); drop it by hand")
        if self.invalidate is not None and self.request.cache_grace > 0:
            time.sleep(self.request.cache_grace)
            self.invalidate([m.name for m in self.models])


def _is_uuid(text: str) -> bool:
    import uuid

    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def discard(url: str, run_id: str) -> list[str]:
    """Drop the tables of a run that was not swapped (built, or abandoned half-way)."""
    with connect(url) as conn:
        found = conn.execute("SELECT tables, status FROM replay_runs WHERE run_id = %s", (run_id,)).fetchone()
        if found is None:
            raise LookupError(f"no replay run {run_id!r}")
        tables, status = found
        if status == "swapped":
            raise ValueError(f"run {run_id} was swapped in: its tables are the live ones")
        dropped = []
        with conn.transaction():
            for table in tables.values():
                conn.execute(f"DROP TABLE IF EXISTS {rebuild.ident(table).as_string(conn)}")
                dropped.append(table)
            conn.execute("UPDATE replay_runs SET status = 'abandoned', updated_at = now() WHERE run_id = %s", (run_id,))
        return dropped


def redis_invalidator(redis_url: str) -> Callable[[Sequence[str]], None]:
    """Deletes every cached entry of the given models (``ts:rm:<model>:*``)."""
    from redis import Redis

    from projections.cache import PREFIX

    def invalidate(models: Sequence[str]) -> None:
        client = Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=10)
        try:
            for model in models:
                batch: list[bytes] = []
                for key in client.scan_iter(match=f"{PREFIX}{model}:*", count=1000):
                    batch.append(key)
                    if len(batch) >= 1000:
                        client.unlink(*batch)
                        batch = []
                if batch:
                    client.unlink(*batch)
        finally:
            client.close()

    return invalidate


__all__ = ["Part", "Progress", "Replay", "Request", "Result", "build_part", "discard", "redis_invalidator", "Row"]
