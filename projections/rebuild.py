"""The SQL of a rebuild: tables beside the live ones, COPY in and out, and the swap.

Everything here runs as the owner of the read models (``MIGRATION_DATABASE_URL``): creating,
renaming and dropping tables needs it. A building table is made ``LIKE`` its live table (same
columns in the same order, defaults, NOT NULL and CHECK constraints) and no index; once its bulk
is written, before the catch-up and the swap, it gets the live table's other indexes, privileges
and owner (``finish_table``). Building an index over the loaded rows is one sort; keeping it
during the COPY cost about a third of the COPY's CPU in PostgreSQL (measured). Its primary key
comes with ``finish_table`` too, unless a part writes again rows it already wrote (from its
second checkpoint on, or from a resumed part's first): rows are replaced by key with a join, a
scan of the whole table without the key, so the key is added then (``add_primary_key``). A
replay that fits in one checkpoint per part keeps the whole saving.

Logged tables throughout: an UNLOGGED build made logged at the end was measured dearer (``SET
LOGGED`` rewrites the whole table into the WAL), and the tables that go live must be durable.

Reading events in commit order: positions are handed out in commit order (see
``event_store.postgres``), so once a statement sees position P, no event at or below P can
appear later. A part that has read every event up to a position it saw has read them all.
"""

from __future__ import annotations

import re
import select
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors, pq, sql

from projections import bulk
from projections.model import ReadModel, Row

# The live tables in the order the projectors lock them (tasks moves counts in projects):
# the swap locks them in the same order, so it never deadlocks with a projector.
LOCK_ORDER = ("tasks", "projects", "users")

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def ident(name: str) -> sql.Identifier:
    if not _NAME.match(name):
        raise ValueError(f"unexpected table name {name!r}")
    return sql.Identifier(name)


def columns_of(conn: psycopg.Connection[Any], table: str) -> list[tuple[str, str]]:
    """(column, kind) of a table, in order."""
    rows = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (table,),
    ).fetchall()
    return [(name, bulk.column_kind(type_)) for name, type_ in rows]


def table_exists(conn: psycopg.Connection[Any], table: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]  # type: ignore[index]


def create_building_table(conn: psycopg.Connection[Any], live: str, table: str, key: str) -> None:
    """The table, without any index: its bulk goes in first, its primary key comes later (one
    sort instead of a B-tree insert per row, about a third of the COPY's cost in PostgreSQL,
    measured): before rows already written are written again (``RowWriter``), else with
    ``finish_table``. A duplicate key, which would be a defect, fails the primary key's creation."""
    conn.execute(
        sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)").format(ident(table), ident(live))
    )


def add_primary_key(conn: psycopg.Connection[Any], table: str, key: str) -> None:
    """``<table>_pkey`` on ``key``, unless the table has a primary key. The shards of a model
    share its table: a transaction-level advisory lock on the table's name makes the check and
    the creation one step (held to the end of the caller's transaction, if in one, so a shard
    that waited sees the key committed: the check reads ``pg_index`` with the statement's
    snapshot, where a name lookup could answer from a cache of the transaction's start). Called
    by a transaction before it touches the table: it then holds no lock on it while it waits,
    and never deadlocks with another shard."""
    if _has_primary_key(conn, table):
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (table,))
        if not _has_primary_key(conn, table):
            conn.execute(
                sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY ({})").format(ident(table), ident(f"{table}_pkey"), sql.Identifier(key))
            )


def _has_primary_key(conn: psycopg.Connection[Any], table: str) -> bool:
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = %s::regclass AND indisprimary)", (table,)
    ).fetchone()[0]  # type: ignore[index]


def shard_filter(column: sql.Composable, shard: int, shards: int) -> sql.Composable:
    if shards <= 1:
        return sql.SQL("TRUE")
    return sql.SQL("(hashtext({}) & 2147483647) % {} = {}").format(column, sql.Literal(shards), sql.Literal(shard))


def copy_events(
    conn: psycopg.Connection[Any], categories: Sequence[str], after: int, until: int, *, shard: int = 0, shards: int = 1
) -> str:
    """The events of ``categories`` in (after, until], in global order, as COPY text."""
    query = sql.SQL(
        "COPY (SELECT {cols} FROM events WHERE category = ANY({cats}) AND global_position > {after}"
        " AND global_position <= {until} AND {shard} ORDER BY global_position) TO STDOUT"
    ).format(
        cols=sql.SQL(bulk.EVENT_COLUMNS),
        cats=sql.Literal(list(categories)),
        after=sql.Literal(after),
        until=sql.Literal(until),
        shard=shard_filter(sql.Identifier("stream_id"), shard, shards),
    )
    return _copy_out(conn, query)


# Events per block of ``read_events``: one COPY message (a few MB) per block.
BLOCK_POSITIONS = 8192
_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"


@dataclass
class EventBlocks:
    """Events as blocks of lines of ``bulk.EVENT_COLUMNS``; ``escaped``: COPY text escaping
    (``\\N``, backslashes doubled), else raw values. Iterating decodes one block at a time."""

    blocks: list[Any]
    escaped: bool

    def __iter__(self) -> Iterator[str]:
        for block in self.blocks:
            yield str(block, "utf-8")


def read_events(
    conn: psycopg.Connection[Any], categories: Sequence[str], after: int, until: int, *, shard: int = 0, shards: int = 1
) -> EventBlocks:
    """The events of ``categories`` in (after, until], each stream's in version order (blocks in
    global order, lines in global order within a block).

    PostgreSQL joins each block of ``BLOCK_POSITIONS`` positions into one text value
    (``string_agg`` of the fields joined by tabs), sent as one binary COPY row beside its first
    position and its event count: one COPY message per few thousand events instead of one per
    event (libpq hands COPY data out a row at a time, and that call was most of the replay's
    reading cost in Python), and no escaping to undo. The values are the same text COPY would
    print (the same output functions, the session in UTC). Each block is its own range scan of
    the primary key, already in position order: no sort, no temporary file. A tab or newline
    inside a stream id or type would shift the fields: every block is checked (exactly
    ``count - 1`` newlines and ``6 * count`` tabs, which no such value can fake) and the range
    is read again as escaped COPY text if one is off."""
    block = BLOCK_POSITIONS
    query = sql.SQL(
        "COPY (SELECT b, x.n, x.lines FROM generate_series({first}::bigint, {last}::bigint) AS b,"
        " LATERAL (SELECT count(*) AS n, string_agg(concat_ws(E'\\t', {cols}), E'\\n' ORDER BY global_position) AS lines"
        "  FROM events WHERE global_position > greatest({after}, b * {block}) AND global_position <= least({until}, (b + 1) * {block})"
        "  AND category = ANY({cats}) AND {shard}) AS x"
        " WHERE x.n > 0) TO STDOUT (FORMAT binary)"
    ).format(
        first=sql.Literal(after // block), last=sql.Literal(max(after, until - 1) // block), block=sql.Literal(block),
        cols=sql.SQL(bulk.EVENT_COLUMNS), after=sql.Literal(after), until=sql.Literal(until),
        cats=sql.Literal(list(categories)), shard=shard_filter(sql.Identifier("stream_id"), shard, shards),
    )  # fmt: skip
    raw = memoryview(_copy_out(conn, query, decode=False))
    if raw[: len(_SIGNATURE)] != _SIGNATURE:
        raise psycopg.DataError("unexpected binary COPY header")
    (extension,) = _INT32.unpack_from(raw, len(_SIGNATURE) + 4)
    at = len(_SIGNATURE) + 8 + extension
    data = raw.obj
    blocks = []
    while True:
        (fields,) = _INT16.unpack_from(raw, at)
        if fields == -1:
            break
        # int4 8, int8 b, int4 8, int8 count, int4 size, the text
        _, number, _, count, size = _BLOCK_HEAD.unpack_from(raw, at + 2)
        at += 2 + _BLOCK_HEAD.size
        if data.count(b"\n", at, at + size) != count - 1 or data.count(b"\t", at, at + size) != 6 * count:
            return EventBlocks([copy_events(conn, categories, after, until, shard=shard, shards=shards).encode()], escaped=True)
        blocks.append((number, raw[at : at + size]))
        at += size
    blocks.sort(key=lambda b: b[0])  # in block order, whatever order the rows came in
    return EventBlocks([b for _, b in blocks], escaped=False)


_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")
_BLOCK_HEAD = struct.Struct(">iqiqi")


def _copy_out(conn: psycopg.Connection[Any], query: sql.Composable, *, decode: bool = True) -> Any:
    """All the COPY TO output of ``query``, decoded (or bytes). Straight through libpq (psycopg's
    own copy iterator costs a few microseconds of Python per row), non-blocking: it waits on
    the socket with the GIL released, so it can run in a thread while another one works."""
    text = query.as_string(conn).encode()
    pgconn = conn.pgconn
    with conn.lock:
        pgconn.send_query(text)
        result = _next_result(pgconn)
        if result is None or result.status != pq.ExecStatus.COPY_OUT:
            while _next_result(pgconn) is not None:
                pass
            raise errors.error_from_result(result, encoding=conn.info.encoding) if result else psycopg.OperationalError("COPY did not start")
        chunks: list[Any] = []
        append, get = chunks.append, pgconn.get_copy_data
        while True:
            size, data = get(1)
            if size > 0:
                append(data)
            elif size == 0:
                _wait_readable(pgconn)
            else:
                break
        result = _next_result(pgconn)
        while _next_result(pgconn) is not None:
            pass
        if result is None or result.status != pq.ExecStatus.COMMAND_OK:
            raise errors.error_from_result(result, encoding=conn.info.encoding) if result else psycopg.OperationalError("COPY ended without a result")
    data = b"".join(chunks)
    return data.decode() if decode else data


def _wait_readable(pgconn: Any) -> None:
    poll = select.poll()
    poll.register(pgconn.socket, select.POLLIN)
    poll.poll()
    pgconn.consume_input()


def _next_result(pgconn: Any) -> Any:
    pgconn.consume_input()
    while pgconn.is_busy():
        _wait_readable(pgconn)
    return pgconn.get_result()


def load_rows(
    conn: psycopg.Connection[Any], model: ReadModel, table: str, *, keys: Iterable[str] | None = None,
    shard: int = 0, shards: int = 1,
) -> dict[str, Row]:  # fmt: skip
    """Rows of a building table by stream (all of a shard, or those of ``keys``), as ``apply``
    left them: what a resumed or catching-up fold continues from."""
    columns = [(c, k) for c, k in columns_of(conn, table) if c in model.columns]
    stream = sql.SQL("({} || {}::text)").format(sql.Literal(model.category + "-"), sql.Identifier(model.key))
    where: sql.Composable = shard_filter(stream, shard, shards)
    if keys is not None:
        where = sql.SQL("{} = ANY({}::uuid[])").format(sql.Identifier(model.key), sql.Literal(list(keys)))
    query = sql.SQL("COPY (SELECT {} FROM {} WHERE {} AND version > 0) TO STDOUT").format(
        sql.SQL(", ").join(sql.Identifier(c) for c, _ in columns), ident(table), where
    )
    rows = bulk.parse_rows(_copy_out(conn, query), columns)
    return {f"{model.category}-{row[model.key]}": row for row in rows}


class RowWriter:
    """Writes folded rows into a building table with COPY: new rows straight in, rows already
    written once through a staging table (delete and insert, set-based, by the primary key,
    added to the table the first time: ``add_primary_key``)."""

    def __init__(self, conn: psycopg.Connection[Any], model: ReadModel, table: str) -> None:
        self.conn = conn
        self.model = model
        self.table = table
        self.columns = [(c, k) for c, k in columns_of(conn, table) if c in model.columns]
        self.line = bulk.row_formatter(self.columns)
        self.written: set[str] = set()  # streams with a row in the table
        self._names = sql.SQL(", ").join(sql.Identifier(c) for c, _ in self.columns)
        self._stage = f"stage_{table}"[:63]
        self._keyed = False  # the table has its primary key (added here, or found)

    def write(self, streams_rows: Sequence[tuple[str, Row]]) -> None:
        """Inside the caller's transaction. Writing rows again adds the primary key when the
        table lacks it: a transaction that holds no lock on the table yet (a checkpoint's)."""
        written = self.written
        if written:
            fresh = [row for stream, row in streams_rows if stream not in written]
            again = [row for stream, row in streams_rows if stream in written]
        else:
            fresh, again = [row for _, row in streams_rows], []
        if again and not self._keyed:
            add_primary_key(self.conn, self.table, self.model.key)
            self._keyed = True
        if fresh:
            self._copy_in(ident(self.table), fresh)
        if again:
            self.conn.execute(
                sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS").format(
                    ident(self._stage), ident(self.table)
                )
            )
            self._copy_in(ident(self._stage), again)
            key = sql.Identifier(self.model.key)
            self.conn.execute(
                sql.SQL("DELETE FROM {t} USING {s} WHERE {t}.{k} = {s}.{k}").format(t=ident(self.table), s=ident(self._stage), k=key)
            )
            self.conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM {}").format(ident(self.table), ident(self._stage)))
        self.written.update(stream for stream, _ in streams_rows)

    def _copy_in(self, table: sql.Composable, rows: Sequence[Row]) -> None:
        line = self.line
        with self.conn.cursor() as cur, cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(table, self._names)) as copy:
            for start in range(0, len(rows), 5000):
                copy.write("".join(map(line, rows[start : start + 5000])).encode())


def set_progress(conn: psycopg.Connection[Any], run_id: str, part: str, position: int, events: int) -> None:
    conn.execute(
        "INSERT INTO replay_progress (run_id, part, position, events) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (run_id, part) DO UPDATE SET position = EXCLUDED.position, events = EXCLUDED.events, updated_at = now()",
        (run_id, part, position, events),
    )


# --- finishing a building table ---------------------------------------------------------------


def live_indexes(conn: psycopg.Connection[Any], live: str) -> list[tuple[str, str]]:
    """(name, definition) of the live table's indexes other than its primary key."""
    return conn.execute(
        "SELECT i.relname, pg_get_indexdef(x.indexrelid) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
        " WHERE x.indrelid = %s::regclass AND NOT x.indisprimary ORDER BY i.relname",
        (live,),
    ).fetchall()


def index_name(name: str, suffix: str) -> str:
    return f"{name[: 62 - len(suffix)]}_{suffix}"


def finish_table(conn: psycopg.Connection[Any], live: str, table: str, suffix: str, key: str) -> None:
    """The primary key (``<table>_pkey``), the live table's other indexes (named
    ``<index>_<suffix>`` until the swap), owner and privileges on the building table; then
    ANALYZE, so it is planned well from its first query."""
    add_primary_key(conn, table, key)  # a part that wrote rows again, or a resumed run, added it
    for name, definition in live_indexes(conn, live):
        new_name = index_name(name, suffix)
        if table_exists(conn, new_name):
            continue  # a resumed run made it already
        # "CREATE [UNIQUE] INDEX <name> ON <schema>.<live> USING ...": the same on the new table.
        head, sep, rest = definition.partition(" ON ")
        _, _, using = rest.partition(" USING ")
        if not sep or not using:
            raise RuntimeError(f"cannot read the definition of index {name}: {definition}")
        unique = "UNIQUE " if head.startswith("CREATE UNIQUE") else ""
        conn.execute(sql.SQL(f"CREATE {unique}INDEX {{}} ON {{}} USING {using}").format(ident(new_name), ident(table)))  # type: ignore[arg-type]
    owner, acl = conn.execute(
        "SELECT pg_get_userbyid(relowner), (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = %s::regclass)"
        " FROM pg_class WHERE oid = %s::regclass",
        (table, live),
    ).fetchone()  # type: ignore[misc]
    live_owner = acl
    if owner != live_owner:
        try:
            with conn.transaction():
                conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(ident(table), sql.Identifier(live_owner)))
        except psycopg.errors.InsufficientPrivilege:
            pass  # run by a role that cannot hand it over: the swap still works, the owner differs
    grants = conn.execute(
        "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END, a.privilege_type"
        " FROM pg_class c, aclexplode(c.relacl) AS a WHERE c.oid = %s::regclass AND a.grantee <> c.relowner",
        (live,),
    ).fetchall()
    for grantee, privilege in grants:
        target = sql.SQL("PUBLIC") if grantee == "PUBLIC" else sql.Identifier(grantee)
        conn.execute(sql.SQL("GRANT {} ON {} TO {}").format(sql.SQL(privilege), ident(table), target))
    conn.execute(sql.SQL("ANALYZE {}").format(ident(table)))


def recount(conn: psycopg.Connection[Any], projects_table: str, tasks_table: str) -> None:
    """Every project's task counts by status from a tasks table (projects known only by their
    tasks get a row at version 0, as the live projector makes them)."""
    conn.execute(
        sql.SQL(
            "INSERT INTO {p} (project_id, task_counts) SELECT project_id, counts FROM ("
            " SELECT project_id, jsonb_object_agg(status, n) AS counts FROM ("
            "  SELECT project_id, status, count(*) AS n FROM {t} GROUP BY project_id, status) AS s"
            " GROUP BY project_id) AS c"
            " ON CONFLICT (project_id) DO UPDATE SET task_counts = EXCLUDED.task_counts"
        ).format(p=ident(projects_table), t=ident(tasks_table))
    )
    conn.execute(
        sql.SQL(
            "UPDATE {p} SET task_counts = '{{}}'::jsonb WHERE task_counts <> '{{}}'::jsonb"
            " AND NOT EXISTS (SELECT 1 FROM {t} WHERE {t}.project_id = {p}.project_id)"
        ).format(p=ident(projects_table), t=ident(tasks_table))
    )


def swap_tables(conn: psycopg.Connection[Any], live: str, table: str, old: str, suffix: str) -> None:
    """Inside the swap's transaction, the live table locked: the live table and its indexes
    take the ``old`` names, the building table and its indexes the live ones."""
    for name, _ in live_indexes(conn, live):
        conn.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(ident(name), ident(index_name(name, "old_" + suffix))))
        conn.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(ident(index_name(name, suffix)), ident(name)))
    conn.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(ident(f"{live}_pkey"), ident(index_name(f"{live}_pkey", "old_" + suffix))))
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(ident(live), ident(old)))
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(ident(table), ident(live)))
    conn.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(ident(f"{table}_pkey"), ident(f"{live}_pkey")))
