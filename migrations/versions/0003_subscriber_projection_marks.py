"""subscriber projection marks (fast path for unchanged snapshots)

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("subscribers") as batch:
        batch.add_column(sa.Column("next_change_ms", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("projection_key", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("subscribers") as batch:
        batch.drop_column("projection_key")
        batch.drop_column("next_change_ms")
