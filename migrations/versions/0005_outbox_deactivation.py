"""sink outbox: a deactivation names no mode (sink_outbox.mode nullable)

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sink_outbox") as batch:
        batch.alter_column("mode", existing_type=sa.String(length=64), nullable=True)


def downgrade() -> None:
    # Before this revision a deactivation was written in audit (it was sent in audit too).
    op.execute("UPDATE sink_outbox SET mode = 'audit' WHERE mode IS NULL")
    with op.batch_alter_table("sink_outbox") as batch:
        batch.alter_column("mode", existing_type=sa.String(length=64), nullable=False)
