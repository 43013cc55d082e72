"""sinks: course mappings, LMS usernames, sink outbox

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 10:00:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('course_mappings',
    sa.Column('resource', sa.String(length=255), nullable=False),
    sa.Column('course_run_id', sa.String(length=255), nullable=False),
    sa.Column('mode', sa.String(length=64), nullable=False),
    sa.Column('active', sa.Boolean(), server_default='1', nullable=False),
    sa.Column('expires_ms', sa.BigInteger(), nullable=True),
    sa.Column('on_revoke', sa.String(length=16), server_default='audit', nullable=False),
    sa.Column('expiry_enqueued', sa.Boolean(), server_default='0', nullable=False),
    sa.Column('updated_ms', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('resource')
    )

    op.create_table('lms_users',
    sa.Column('app_user_id', sa.String(length=255), nullable=False),
    sa.Column('username', sa.String(length=255), nullable=False),
    sa.PrimaryKeyConstraint('app_user_id')
    )

    op.create_table('sink_outbox',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('sink', sa.String(length=32), nullable=False),
    sa.Column('customer_id', sa.String(length=255), nullable=False),
    sa.Column('resource', sa.String(length=255), nullable=False),
    sa.Column('course_run_id', sa.String(length=255), nullable=False),
    sa.Column('mode', sa.String(length=64), nullable=False),
    sa.Column('is_active', sa.Boolean(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('next_attempt_ms', sa.BigInteger(), nullable=False),
    sa.Column('leased_until_ms', sa.BigInteger(), nullable=True),
    sa.Column('cause_kind', sa.String(length=16), nullable=False),
    sa.Column('cause_ref', sa.String(length=255), nullable=False),
    sa.Column('username', sa.String(length=255), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_ms', sa.BigInteger(), nullable=False),
    sa.Column('done_ms', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('sink_outbox', schema=None) as batch_op:
        batch_op.create_index('ix_sink_outbox_group', ['status', 'customer_id', 'resource', 'id'], unique=False)
        batch_op.create_index('ix_sink_outbox_history', ['customer_id', 'resource'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('sink_outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_sink_outbox_history')
        batch_op.drop_index('ix_sink_outbox_group')

    op.drop_table('sink_outbox')
    op.drop_table('lms_users')
    op.drop_table('course_mappings')
