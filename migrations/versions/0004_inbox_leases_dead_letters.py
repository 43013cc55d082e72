"""inbox leases, retries and dead letters; users named by each webhook; read failures; the
operator audit log

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inbox_events") as batch:
        batch.add_column(sa.Column("lease_until_ms", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("lease_holder", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("next_attempt_ms", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("error_kind", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("progress", sa.Text(), nullable=True))
        batch.add_column(sa.Column("replays", sa.Integer(), nullable=False, server_default="0"))
        batch.create_index("ix_inbox_status_next_attempt", ["status", "next_attempt_ms"])
    # "failed" rows were dead letters in all but name
    op.execute("UPDATE inbox_events SET status = 'dead', error_kind = 'terminal' WHERE status = 'failed'")
    op.create_table(
        "inbox_event_users",
        sa.Column("inbox_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("app_user_id", sa.String(length=255), primary_key=True),
    )
    op.create_index("ix_inbox_event_users_user", "inbox_event_users", ["app_user_id", "inbox_id"])
    with op.batch_alter_table("subscribers") as batch:
        batch.add_column(sa.Column("read_failures", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "operator_actions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=255), nullable=False, server_default=""),
        sa.Column("detail", sa.Text(), nullable=True),
    )
    op.create_index("ix_operator_actions_at", "operator_actions", ["at_ms"])


def downgrade() -> None:
    op.drop_index("ix_operator_actions_at", table_name="operator_actions")
    op.drop_table("operator_actions")
    with op.batch_alter_table("subscribers") as batch:
        batch.drop_column("read_failures")
    op.drop_index("ix_inbox_event_users_user", table_name="inbox_event_users")
    op.drop_table("inbox_event_users")
    op.execute("UPDATE inbox_events SET status = 'failed' WHERE status = 'dead'")
    with op.batch_alter_table("inbox_events") as batch:
        batch.drop_index("ix_inbox_status_next_attempt")
        batch.drop_column("replays")
        batch.drop_column("progress")
        batch.drop_column("error_kind")
        batch.drop_column("next_attempt_ms")
        batch.drop_column("lease_holder")
        batch.drop_column("lease_until_ms")
