"""taskstream_heads_ok(heads): the fast path's version check, made after taking the append lock.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28

A statement's snapshot is taken when it starts, before its trigger takes the append lock, so a
check written as plain SQL in the fast path's INSERT can miss a commit made while it waited.
For a stream the batch writes, that stale answer ends in a unique-key collision; for a guard
(a part that only checks a version) nothing would collide. This VOLATILE function takes the lock
first, then reads: in READ COMMITTED each statement inside it takes a fresh snapshot, which sees
everything committed before the lock was granted.
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION taskstream_heads_ok(heads jsonb) RETURNS boolean
        LANGUAGE plpgsql VOLATILE AS $$
        DECLARE
            ok boolean;
        BEGIN
            PERFORM pg_advisory_xact_lock(7306010001);  -- APPEND_LOCK_KEY of migration 0001
            SELECT COALESCE(bool_and(COALESCE((SELECT max(e.version) FROM events e WHERE e.stream_id = h.stream), 0)
                                     = h.expected), true)
              INTO ok
              FROM jsonb_to_recordset(heads) AS h(stream text, expected bigint);
            RETURN ok;
        END $$
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION taskstream_heads_ok(jsonb)")
