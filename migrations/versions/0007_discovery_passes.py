"""discovery passes over the provider's customer list (REST API v2)

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "discovery_passes",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("open", sa.Boolean(), nullable=True),
        sa.Column("started_ms", sa.BigInteger(), nullable=False),
        sa.Column("finished_ms", sa.BigInteger(), nullable=True),
        sa.Column("cursor", sa.String(255), nullable=True),
        sa.Column("pages", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("customers", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("new_customers", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("repaired", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("failed", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("leased_until_ms", sa.BigInteger(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        # one open pass at a time: ``open`` is True while it runs, NULL once finished
        sa.UniqueConstraint("open", name="uq_discovery_passes_open"),
    )
    op.create_index("ix_discovery_passes_finished", "discovery_passes", ["finished_ms"])


def downgrade() -> None:
    op.drop_index("ix_discovery_passes_finished", table_name="discovery_passes")
    op.drop_table("discovery_passes")
