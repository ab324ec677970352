"""One part of a replay: a read model, or one shard of it, folded up to a position.

A part reads its category's events in ``(position, target]`` ranges with ``COPY``
(``rebuild.read_events``: blocks of lines PostgreSQL builds), each range on a thread and a
connection of their own while this thread folds the one before in memory
(``projections.bulk.Fold.apply_text``: the live projectors' own steps on each stream's row, in
place, or their ``apply`` for a model without steps) and, at each checkpoint, writes the rows
it changed and its position (``replay_progress``) in one transaction on its other connection.
A part started again loads its rows back and continues from its position; the rows' versions
make re-reading the last range harmless. It runs in the replay's process or in one of its own
(``part_process``), with the garbage collector off: the fold holds millions of young containers
that are never garbage.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg

from projections import bulk, rebuild
from projections.catalog import MODELS
from schemas.catalog import registry

CONNECT_OPTIONS = "-c TimeZone=UTC -c default_transaction_isolation=read\\ committed"


@dataclass(frozen=True)
class Part:
    model: str
    shard: int = 0
    shards: int = 1

    @property
    def name(self) -> str:
        return self.model if self.shards == 1 else f"{self.model}/{self.shard}"


def parts_named(names: Iterable[str]) -> list[Part]:
    """The parts of a run from their names (``tasks``, or ``tasks/0`` … ``tasks/<n-1>``)."""
    names = sorted(names)
    shards: dict[str, int] = {}
    for name in names:
        model, _, shard = name.partition("/")
        if shard:
            shards[model] = shards.get(model, 0) + 1
    out = []
    for name in names:
        model, _, shard = name.partition("/")
        out.append(Part(model, int(shard), shards[model]) if shard else Part(model))
    return out


def connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True, options=CONNECT_OPTIONS)


# --- one part: fold a category (or a shard of it) up to a position --------------------------------


def build_part(
    url: str, run_id: str, table: str, part: Part, start: int, target: int, *, chunk_span: int, checkpoint_events: int,
    report: Callable[[str, int], None], stopped: Callable[[], bool], cpu: dict[str, float] | None = None,
    keep: list[Any] | None = None,
) -> tuple[int, list[bulk.Failure]]:  # fmt: skip
    """Fold ``part`` from ``start`` to ``target`` into ``table``; returns the position reached
    (``target`` unless stopped) and the streams it stopped. ``cpu`` collects this process's CPU
    seconds by stage (``read``, ``fold``, ``write``); ``keep`` gets the fold, for a caller that
    would rather not free its rows one by one (a part's process, about to exit).

    Pipelined: a thread reads the next range on a connection of its own (waiting on its socket
    with the GIL released; PostgreSQL builds that range meanwhile) while this thread folds the
    current one; rows are written at checkpoints, between ranges, on the other connection."""
    model = MODELS[part.model]
    cpu = cpu if cpu is not None else {}
    for stage in ("read", "fold", "write"):
        cpu.setdefault(stage, 0.0)

    def read(after: int, until: int) -> rebuild.EventBlocks:
        began = time.thread_time()
        try:
            return rebuild.read_events(reader, [model.category], after, until, shard=part.shard, shards=part.shards)
        finally:
            cpu["read"] += time.thread_time() - began

    # The pool's exit waits for a read still under way (stopped), before its connection closes.
    with connect(url) as conn, connect(url) as reader, _no_gc(), ThreadPoolExecutor(1, thread_name_prefix="replay-read") as pool:
        began = time.thread_time()
        rows = rebuild.load_rows(conn, model, table, shard=part.shard, shards=part.shards) if start > 0 else {}
        fold = bulk.Fold(model, registry(), rows=rows, position=start)
        if keep is not None:
            keep.append(fold)
        writer = rebuild.RowWriter(conn, model, table)
        writer.written = set(rows)
        del rows
        cpu["read"] += time.thread_time() - began
        ranges = [(a, min(target, a + chunk_span)) for a in range(start, target, chunk_span)]
        position, pending, flushed_at = start, 0, time.monotonic()
        coming = pool.submit(read, *ranges[0]) if ranges else None
        for index, (_, upto) in enumerate(ranges):
            if stopped():
                break
            blocks = coming.result()  # type: ignore[union-attr]  # None only once stopped(), which stays so
            coming = pool.submit(read, *ranges[index + 1]) if index + 1 < len(ranges) and not stopped() else None
            began = time.thread_time()
            events = sum(fold.apply_text(block, escaped=blocks.escaped) for block in blocks)
            del blocks
            position = fold.position = upto
            cpu["fold"] += time.thread_time() - began
            pending += events
            report(part.name, events)
            if position >= target or pending >= checkpoint_events or time.monotonic() - flushed_at > 30 or stopped():
                began = time.thread_time()
                _checkpoint(conn, writer, fold, run_id, part.name, position)
                cpu["write"] += time.thread_time() - began
                pending, flushed_at = 0, time.monotonic()
        return position, list(fold.failed.values())


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """The fold holds millions of young containers that are never garbage: without this, the
    cyclic collector walks them again and again (about a quarter of the time, measured)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _checkpoint(conn: psycopg.Connection[Any], writer: rebuild.RowWriter, fold: bulk.Fold, run_id: str, part: str, position: int) -> None:
    dirty, rows = fold.dirty, fold.rows
    if len(dirty) * 2 > len(rows):  # most rows (a fresh build): in the order they were made
        changed = [(s, row) for s, row in rows.items() if s in dirty]
    else:
        changed = [(s, rows[s]) for s in dirty]
    with conn.transaction():
        writer.write(changed)
        rebuild.set_progress(conn, run_id, part, position, fold.events)
    fold.dirty = set()


# A forked part's fold, kept until its process ends with os._exit (multiprocessing's fork start
# does): freeing millions of rows one by one cost about 0.3 µs of CPU per event folded, measured.
_KEPT: list[Any] = []


def part_process(url: str, run_id: str, table: str, part: Part, start: int, target: int, chunk_span: int,
                  checkpoint_events: int, reports: Any, stop: Any) -> None:  # fmt: skip
    """A part in a process of its own (spawned): reports ``(part, events)`` as it goes and
    ``(part, position, failures, cpu by stage)`` at the end; SIGINT is the parent's to handle."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        cpu: dict[str, float] = {}
        position, failures = build_part(
            url, run_id, table, part, start, target, chunk_span=chunk_span, checkpoint_events=checkpoint_events,
            report=lambda name, n: reports.put(("events", name, n)), stopped=stop.is_set, cpu=cpu, keep=_KEPT,
        )  # fmt: skip
        reports.put(("done", part.name, position, failures, cpu))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the run
        reports.put(("error", part.name, f"{type(exc).__name__}: {exc}"))
        raise
