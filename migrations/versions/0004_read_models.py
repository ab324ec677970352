"""Read models (users, projects, tasks), projection tracking and the dead-letter table.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

Every read-model row stores the stream ``version`` it reflects: an event at or below it changes
nothing (see projections/runtime.py). ``projects`` rows may exist with ``version = 0`` before
their ``project.created`` event was applied: the tasks projection counts a project's tasks by
status in the same transaction as the task rows, whatever order the two topics are consumed in;
such stub rows are invisible to queries. ``counts_revision`` moves whenever those counts move,
so a cached project is replaced when either its stream or its counts change.
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE users (
            user_id         uuid        PRIMARY KEY,
            email           text        NOT NULL,
            display_name    text        NOT NULL,
            role            text        NOT NULL,
            active          boolean     NOT NULL,
            created_at      timestamptz NOT NULL,
            updated_at      timestamptz NOT NULL,
            created_position bigint     NOT NULL,
            version         bigint      NOT NULL CHECK (version >= 1),
            global_position bigint      NOT NULL
        )
        """
    )
    op.execute("CREATE INDEX users_created ON users (created_position)")
    op.execute(
        """
        CREATE TABLE projects (
            project_id       uuid        PRIMARY KEY,
            owner_id         uuid,
            name             text,
            description      text,
            archived         boolean     NOT NULL DEFAULT false,
            members          jsonb       NOT NULL DEFAULT '{}'::jsonb,
            task_counts      jsonb       NOT NULL DEFAULT '{}'::jsonb,
            created_at       timestamptz,
            updated_at       timestamptz,
            created_position bigint,
            version          bigint      NOT NULL DEFAULT 0 CHECK (version >= 0),
            counts_revision  bigint      NOT NULL DEFAULT 0,
            global_position  bigint      NOT NULL DEFAULT 0
        )
        """
    )
    op.execute("CREATE INDEX projects_members ON projects USING gin (members)")
    op.execute("CREATE INDEX projects_created ON projects (created_position) WHERE version > 0")
    op.execute(
        """
        CREATE TABLE tasks (
            task_id          uuid        PRIMARY KEY,
            project_id       uuid        NOT NULL,
            kind             text        NOT NULL,
            payload          jsonb       NOT NULL,
            status           text        NOT NULL,
            priority         integer     NOT NULL,
            max_attempts     integer     NOT NULL,
            timeout_seconds  integer     NOT NULL,
            attempts         integer     NOT NULL DEFAULT 0,
            worker_id        text,
            submitted_at     timestamptz NOT NULL,
            started_at       timestamptz,
            succeeded_at     timestamptz,
            failed_at        timestamptz,
            cancelled_at     timestamptz,
            updated_at       timestamptz NOT NULL,
            result_ref       text,
            result           jsonb,
            summary          text,
            last_error       text,
            cancel_reason    text,
            retry_scheduled  boolean     NOT NULL DEFAULT false,
            created_position bigint      NOT NULL,
            version          bigint      NOT NULL CHECK (version >= 1),
            global_position  bigint      NOT NULL
        )
        """
    )
    # Every index here is written again whenever a task changes status (three times in a task's
    # life): only the list queries' orders are indexed; a kind filter scans the project's range.
    op.execute("CREATE INDEX tasks_project ON tasks (project_id, created_position)")
    op.execute("CREATE INDEX tasks_project_status ON tasks (project_id, status, created_position)")
    # Adds status counts key by key: the tasks projection moves counts by difference.
    op.execute(
        """
        CREATE FUNCTION taskstream_add_counts(a jsonb, b jsonb) RETURNS jsonb
        LANGUAGE sql IMMUTABLE AS $$
            SELECT COALESCE(jsonb_object_agg(k, n), '{}'::jsonb) FROM (
                SELECT k, sum(v)::bigint AS n FROM (
                    SELECT key AS k, value::bigint AS v FROM jsonb_each_text(a)
                    UNION ALL
                    SELECT key, value::bigint FROM jsonb_each_text(b)
                ) AS parts GROUP BY k
            ) AS sums
        $$
        """
    )
    op.execute(
        """
        CREATE TABLE projection_tracking (
            projection      text        NOT NULL,
            topic           text        NOT NULL,
            partition       integer     NOT NULL,
            "offset"        bigint      NOT NULL,
            global_position bigint      NOT NULL,
            event_time      timestamptz NOT NULL,
            consumer        text        NOT NULL,
            updated_at      timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (projection, topic, partition)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE projection_failures (
            projection      text        NOT NULL,
            stream_id       text        NOT NULL,
            version         bigint      NOT NULL,
            event_id        uuid        NOT NULL,
            global_position bigint      NOT NULL,
            type            text        NOT NULL,
            error           text        NOT NULL,
            attempts        integer     NOT NULL,
            first_failed_at timestamptz NOT NULL DEFAULT now(),
            last_failed_at  timestamptz NOT NULL DEFAULT now(),
            resolved_at     timestamptz,
            PRIMARY KEY (projection, stream_id, version)
        )
        """
    )
    op.execute(
        "CREATE INDEX projection_failures_open ON projection_failures (projection, stream_id) WHERE resolved_at IS NULL"
    )


def downgrade() -> None:
    for table in ("projection_failures", "projection_tracking", "tasks", "projects", "users"):
        op.execute(f"DROP TABLE {table}")
    op.execute("DROP FUNCTION taskstream_add_counts(jsonb, jsonb)")
