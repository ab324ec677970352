"""The worker pool's own tables: task leases and schedule, webhook endpoints and deliveries.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30

``worker_tasks`` is not a read model: it is the pool's work list. A row is written when a worker
ingests ``task.submitted`` from the log and says who may act on the task and when. ``queued``:
any worker may claim it once ``due_at`` has passed (a first run, a retry after its backoff, a
requeue); ``leased``: ``lease_id`` holds it until ``due_at``, after which any worker may take it
over (its worker died); ``done``, ``dead`` (finally failed) and ``cancelled`` are at rest. What
the task *is* always comes from its stream in the event store; a row only says whose turn it is.

``webhook_deliveries`` is an outbox (one row per endpoint and event, unique) with its attempts
in ``webhook_attempts``, the delivery log.
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE worker_tasks (
            task_id      uuid        PRIMARY KEY,
            project_id   uuid        NOT NULL,
            kind         text        NOT NULL,
            priority     integer     NOT NULL,
            status       text        NOT NULL CHECK (status IN ('queued', 'leased', 'done', 'dead', 'cancelled')),
            due_at       timestamptz NOT NULL,
            lease_id     uuid,
            owner        text,
            attempts     integer     NOT NULL DEFAULT 0,
            last_error   text,
            submitted_at timestamptz NOT NULL,
            updated_at   timestamptz NOT NULL DEFAULT now(),
            CHECK ((status = 'leased') = (lease_id IS NOT NULL))
        )
        """
    )
    op.execute("CREATE INDEX worker_tasks_due ON worker_tasks (priority DESC, due_at) WHERE status IN ('queued', 'leased')")
    op.execute("CREATE INDEX worker_tasks_dead ON worker_tasks (updated_at) WHERE status = 'dead'")
    op.execute("CREATE INDEX worker_tasks_project ON worker_tasks (project_id)")
    # project.export finds a project's tasks in the store, not in a read model.
    op.execute(
        "CREATE INDEX events_task_submitted_project ON events ((data->>'project_id'), global_position)"
        " WHERE type = 'task.submitted'"
    )
    op.execute(
        """
        CREATE TABLE webhook_endpoints (
            endpoint_id      uuid        PRIMARY KEY,
            project_id       uuid        NOT NULL,
            url              text        NOT NULL,
            event_types      text[]      NOT NULL,
            secret           text        NOT NULL,
            previous_secret  text,
            previous_until   timestamptz,
            created_by       text        NOT NULL,
            created_at       timestamptz NOT NULL DEFAULT now(),
            rotated_at       timestamptz,
            deleted_at       timestamptz,
            disabled_at      timestamptz,
            disabled_reason  text,
            failures_in_row  integer     NOT NULL DEFAULT 0
        )
        """
    )
    op.execute("CREATE INDEX webhook_endpoints_project ON webhook_endpoints (project_id) WHERE deleted_at IS NULL")
    op.execute(
        """
        CREATE TABLE webhook_deliveries (
            delivery_id     uuid        PRIMARY KEY,
            endpoint_id     uuid        NOT NULL REFERENCES webhook_endpoints (endpoint_id),
            event_id        uuid        NOT NULL,
            event_type      text        NOT NULL,
            body            text        NOT NULL,
            status          text        NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
            attempts        integer     NOT NULL DEFAULT 0,
            next_attempt_at timestamptz NOT NULL,
            created_at      timestamptz NOT NULL DEFAULT now(),
            finished_at     timestamptz,
            UNIQUE (endpoint_id, event_id)
        )
        """
    )
    op.execute("CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending'")
    op.execute(
        """
        CREATE TABLE webhook_attempts (
            delivery_id  uuid        NOT NULL REFERENCES webhook_deliveries (delivery_id),
            attempt      integer     NOT NULL,
            endpoint_id  uuid        NOT NULL,
            attempted_at timestamptz NOT NULL DEFAULT now(),
            status_code  integer,
            error        text,
            duration_ms  integer     NOT NULL,
            PRIMARY KEY (delivery_id, attempt)
        )
        """
    )
    op.execute("CREATE INDEX webhook_attempts_endpoint ON webhook_attempts (endpoint_id, attempted_at DESC)")


def downgrade() -> None:
    for table in ("webhook_attempts", "webhook_deliveries", "webhook_endpoints", "worker_tasks"):
        op.execute(f"DROP TABLE {table}")
    op.execute("DROP INDEX events_task_submitted_project")
