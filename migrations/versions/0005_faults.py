"""Idempotency expiry index; least-privilege grants for the app role.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30

``idempotency_keys_created`` lets the cleanup (event_store/idempotency.py) find expired
records without reading the table.

Grants to ``taskstream_app`` (created by ``taskstream db-roles``, see taskstream/dbroles.py);
when that role does not exist the grants are skipped with a notice, and every process then
needs the migrating role itself:

- ``events``: SELECT, and INSERT of the writer's columns only. Not ``global_position`` (no
  ``OVERRIDING SYSTEM VALUE``, which would let a writer put an event below a reader's cursor)
  and not ``recorded_at``; no UPDATE, DELETE or TRUNCATE; no ownership, so no DDL and no
  disabling of the append-lock and append-only triggers.
- ``idempotency_keys``: SELECT, INSERT, DELETE (the expiry cleanup).
- ``checkpoints``: SELECT, INSERT, UPDATE.
- the read models and projection bookkeeping (migration 0004): SELECT, INSERT, UPDATE, DELETE.
- Tables and sequences that later migrations create (run by the same role): SELECT, INSERT,
  UPDATE, DELETE and USAGE, SELECT, through default privileges. A later migration that wants
  the app role to have less on a new table revokes it there.
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

APP_ROLE = "taskstream_app"  # taskstream.dbroles.APP_ROLE
READ_MODELS = ("users", "projects", "tasks", "projection_tracking", "projection_failures")
EVENT_COLUMNS = "stream_id, version, event_id, type, schema_version, data, metadata"


def _when_role_exists(statements: list[str]) -> str:
    body = "\n".join(f"        EXECUTE {_quote(s)};" for s in statements)
    return f"""
    DO $$
    BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
            RAISE NOTICE 'role {APP_ROLE} does not exist: no grants made (see taskstream db-roles)';
            RETURN;
        END IF;
{body}
    END $$
    """


def _quote(statement: str) -> str:
    return "'" + statement.replace("'", "''") + "'"


def upgrade() -> None:
    op.execute("CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at)")
    op.execute(
        _when_role_exists(
            [
                f"REVOKE ALL ON events, idempotency_keys, checkpoints FROM {APP_ROLE}",
                f"GRANT SELECT ON events TO {APP_ROLE}",
                f"GRANT INSERT ({EVENT_COLUMNS}) ON events TO {APP_ROLE}",
                f"GRANT SELECT, INSERT, DELETE ON idempotency_keys TO {APP_ROLE}",
                f"GRANT SELECT, INSERT, UPDATE ON checkpoints TO {APP_ROLE}",
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON {', '.join(READ_MODELS)} TO {APP_ROLE}",
                f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {APP_ROLE}",
                f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {APP_ROLE}",
            ]
        )
    )


def downgrade() -> None:
    op.execute(
        _when_role_exists(
            [
                f"ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE USAGE, SELECT ON SEQUENCES FROM {APP_ROLE}",
                f"ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE SELECT, INSERT, UPDATE, DELETE ON TABLES FROM {APP_ROLE}",
                f"REVOKE ALL ON events, idempotency_keys, checkpoints, {', '.join(READ_MODELS)} FROM {APP_ROLE}",
            ]
        )
    )
    op.execute("DROP INDEX idempotency_keys_created")
