"""history read marks: when each customer's REST v2 history was last read, and why

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "history_marks",
        sa.Column("customer_id", sa.String(length=255), primary_key=True),
        sa.Column("v1_digest", sa.String(length=64), nullable=False),
        sa.Column("checked_ms", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.Column("recurring", sa.Boolean(), server_default="0", nullable=False),
        sa.Column("read_ms", sa.BigInteger(), nullable=True),
        sa.Column("answer_digest", sa.String(length=64), nullable=True),
        sa.Column("requests", sa.Integer(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("history_marks")
