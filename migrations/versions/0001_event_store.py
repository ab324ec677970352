"""The event store: events (append-only), idempotency keys, checkpoints.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# The key of the transaction-level advisory lock that serialises appends: see
# event_store/postgres.py ("Why no tailing reader skips an event").
APPEND_LOCK_KEY = 7_306_010_001


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE events (
            global_position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            stream_id       text        NOT NULL CHECK (stream_id ~ '^[a-z][a-z0-9_]*-.+$'),
            category        text        NOT NULL GENERATED ALWAYS AS (split_part(stream_id, '-', 1)) STORED,
            version         bigint      NOT NULL CHECK (version >= 1),
            event_id        uuid        NOT NULL UNIQUE,
            type            text        NOT NULL,
            schema_version  integer     NOT NULL DEFAULT 1 CHECK (schema_version >= 1),
            data            jsonb       NOT NULL,
            metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb,
            recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
            CONSTRAINT events_stream_version UNIQUE (stream_id, version)
        )
        """
    )
    op.execute("CREATE INDEX events_category_position ON events (category, global_position)")
    op.execute("COMMENT ON TABLE events IS 'The source of truth and the audit log. Append-only.'")
    # Every insert takes the append lock, whoever runs it: commit order == position order.
    op.execute(
        f"""
        CREATE FUNCTION events_take_append_lock() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_advisory_xact_lock({APPEND_LOCK_KEY});
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER events_append_lock BEFORE INSERT ON events
        FOR EACH STATEMENT EXECUTE FUNCTION events_take_append_lock()
        """
    )
    op.execute(
        """
        CREATE FUNCTION events_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'the events table is append-only (% refused)', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON events
        FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change()
        """
    )
    op.execute(
        """
        CREATE TABLE idempotency_keys (
            key         text        PRIMARY KEY,
            fingerprint text        NOT NULL,
            stream_id   text        NOT NULL,
            result      jsonb       NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE checkpoints (
            name       text        PRIMARY KEY,
            position   bigint      NOT NULL CHECK (position >= 0),
            updated_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE checkpoints")
    op.execute("DROP TABLE idempotency_keys")
    op.execute("DROP TABLE events")
    op.execute("DROP FUNCTION events_refuse_change()")
    op.execute("DROP FUNCTION events_take_append_lock()")
