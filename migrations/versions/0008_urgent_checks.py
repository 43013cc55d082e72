"""partial indexes of the urgent subscriber checks (dirty customers by check time, projected
expiries by time), so that the sweep selects them before staleness-driven checks at any size

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_subscribers_dirty_check",
        "subscribers",
        ["next_check_ms"],
        postgresql_where=sa.text("dirty"),
        sqlite_where=sa.text("dirty = 1"),
    )
    op.create_index(
        "ix_subscribers_next_change",
        "subscribers",
        ["next_change_ms"],
        postgresql_where=sa.text("next_change_ms IS NOT NULL"),
        sqlite_where=sa.text("next_change_ms IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_subscribers_next_change", table_name="subscribers")
    op.drop_index("ix_subscribers_dirty_check", table_name="subscribers")
