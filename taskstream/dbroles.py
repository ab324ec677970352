"""Least privilege in PostgreSQL: an owner role for migrations, an app role for processes.

``taskstream_owner`` owns the schema's objects and runs the migrations. ``taskstream_app`` is
what the gateway, the relay and every other process connect as: on ``events`` it may only
SELECT and INSERT the columns a writer supplies (not ``global_position``, so no
``INSERT … OVERRIDING SYSTEM VALUE`` below a reader's cursor, and not ``recorded_at``); it owns
nothing, so it can run no DDL and cannot disable the table's triggers. What it may do on the
other tables is granted by migration 0005 (and, through default privileges, on every table a
later migration creates).

``bootstrap`` is run once by an administrator (the dev stack and the tests do it themselves;
for an external PostgreSQL see the README): it creates both roles if they are missing, lets the
owner create objects in the schema, and hands it any objects of the schema another role owns
(a database migrated before the roles existed).
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql

OWNER_ROLE = "taskstream_owner"
APP_ROLE = "taskstream_app"


def role_url(url: str, role: str, password: str | None = None) -> str:
    """``url`` with its user (and password) replaced."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port:
        host = f"{host}:{parts.port}"
    user = quote(role, safe="") + (f":{quote(password, safe='')}" if password else "")
    return urlunsplit((parts.scheme, f"{user}@{host}", parts.path, parts.query, parts.fragment))


def bootstrap(
    admin_url: str,
    *,
    owner: str = OWNER_ROLE,
    app: str = APP_ROLE,
    owner_password: str | None = None,
    app_password: str | None = None,
) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for role, password in ((owner, owner_password), (app, app_password)):
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            statement = sql.SQL("{} ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS").format(
                sql.SQL(verb), sql.Identifier(role)
            )
            if password:
                statement = sql.SQL("{} PASSWORD {}").format(statement, sql.Literal(password))
            conn.execute(statement)
        conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(sql.Identifier(owner)))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(app)))
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        _adopt(conn, owner)


def _adopt(conn: psycopg.Connection, owner: str) -> None:
    """Make ``owner`` the owner of the schema's tables and functions owned by anyone else."""
    tables = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm') AND pg_get_userbyid(c.relowner) <> %s",
        (owner,),
    ).fetchall()
    for (table,) in tables:
        conn.execute(sql.SQL("ALTER TABLE public.{} OWNER TO {}").format(sql.Identifier(table), sql.Identifier(owner)))
    functions = conn.execute(
        "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = 'public' AND pg_get_userbyid(p.proowner) <> %s",
        (owner,),
    ).fetchall()
    for (signature,) in functions:
        conn.execute(sql.SQL("ALTER FUNCTION {} OWNER TO {}").format(sql.SQL(signature), sql.Identifier(owner)))
