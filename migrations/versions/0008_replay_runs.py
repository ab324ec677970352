"""Replay runs: what ``taskstream replay`` is building, and how far each part of it got.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30

A run rebuilds read models from the events table into tables of its own (``<model>_rb_<run>``)
and, unless it was asked for a point in the past, swaps them in for the live ones. Each part of
a run (a read model, or one shard of one) folds events in global order and writes its rows and
its ``position`` in one transaction, so an interrupted run is continued by the next
``taskstream replay`` with the same arguments from exactly what it had written.
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE replay_runs (
            run_id          text        PRIMARY KEY,
            models          text[]      NOT NULL,
            until_position  bigint,
            swap            boolean     NOT NULL,
            tables          jsonb       NOT NULL,
            status          text        NOT NULL
                            CHECK (status IN ('building', 'built', 'swapped', 'abandoned')),
            target_position bigint,
            started_at      timestamptz NOT NULL DEFAULT now(),
            updated_at      timestamptz NOT NULL DEFAULT now(),
            finished_at     timestamptz
        )
        """
    )
    op.execute(
        """
        CREATE TABLE replay_progress (
            run_id      text        NOT NULL REFERENCES replay_runs (run_id) ON DELETE CASCADE,
            part        text        NOT NULL,
            position    bigint      NOT NULL DEFAULT 0,
            events      bigint      NOT NULL DEFAULT 0,
            updated_at  timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (run_id, part)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE replay_progress")
    op.execute("DROP TABLE replay_runs")
