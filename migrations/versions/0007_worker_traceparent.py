"""The trace context of each task's submission, kept with its row in the pool's work list.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30

A task's run may start long after its ``task.submitted`` was consumed (a queued task claimed when
a slot frees, a retry after its backoff, a takeover after a dead worker's lease): the claim path
reads the W3C ``traceparent`` of the submission from ``worker_tasks`` so the worker's run span
(and the appends of its StartTask/SucceedTask/FailTask) join the submission's trace. Nullable:
rows written before this revision, and events without a trace context, have none.
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE worker_tasks ADD COLUMN traceparent text")


def downgrade() -> None:
    op.execute("ALTER TABLE worker_tasks DROP COLUMN traceparent")
