"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-21 23:00:39.267668
"""

from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    
    op.create_table('audit_log',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('at_ms', sa.BigInteger(), nullable=False),
    sa.Column('customer_id', sa.String(length=255), nullable=False),
    sa.Column('resource', sa.String(length=255), nullable=False),
    sa.Column('action', sa.String(length=20), nullable=False),
    sa.Column('before', sa.Text(), nullable=True),
    sa.Column('after', sa.Text(), nullable=True),
    sa.Column('cause_kind', sa.String(length=16), nullable=False),
    sa.Column('cause_ref', sa.String(length=255), nullable=False),
    sa.Column('drift_kind', sa.String(length=32), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.create_index('ix_audit_at', ['at_ms'], unique=False)
        batch_op.create_index('ix_audit_customer', ['customer_id', 'id'], unique=False)

    op.create_table('grants',
    sa.Column('customer_id', sa.String(length=255), nullable=False),
    sa.Column('resource', sa.String(length=255), nullable=False),
    sa.Column('mode', sa.String(length=64), nullable=False),
    sa.Column('expires_ms', sa.BigInteger(), nullable=True),
    sa.Column('sources', sa.Text(), nullable=False),
    sa.Column('updated_ms', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('customer_id', 'resource')
    )
    with op.batch_alter_table('grants', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_grants_expires_ms'), ['expires_ms'], unique=False)

    op.create_table('identities',
    sa.Column('app_user_id', sa.String(length=255), nullable=False),
    sa.Column('customer_id', sa.String(length=255), nullable=False),
    sa.PrimaryKeyConstraint('app_user_id')
    )
    with op.batch_alter_table('identities', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_identities_customer_id'), ['customer_id'], unique=False)

    op.create_table('inbox_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('provider', sa.String(length=32), nullable=False),
    sa.Column('event_id', sa.String(length=200), nullable=True),
    sa.Column('event_type', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('body', sa.LargeBinary(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.Column('enqueued_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('processed_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('provider', 'event_id', name='uq_inbox_provider_event')
    )
    with op.batch_alter_table('inbox_events', schema=None) as batch_op:
        batch_op.create_index('ix_inbox_status_received', ['status', 'received_at'], unique=False)

    op.create_table('ledger_transactions',
    sa.Column('transaction_id', sa.String(length=255), nullable=False),
    sa.Column('product_id', sa.String(length=255), nullable=True),
    sa.Column('kind', sa.String(length=20), nullable=True),
    sa.Column('original_transaction_id', sa.String(length=255), nullable=True),
    sa.Column('store', sa.String(length=32), nullable=True),
    sa.Column('is_sandbox', sa.Boolean(), nullable=True),
    sa.Column('purchased_ms', sa.BigInteger(), nullable=True),
    sa.Column('period_type', sa.String(length=20), nullable=True),
    sa.Column('ownership', sa.String(length=20), nullable=True),
    sa.Column('expires_ms', sa.BigInteger(), nullable=True),
    sa.Column('grace_expires_ms', sa.BigInteger(), nullable=True),
    sa.Column('refunded_ms', sa.BigInteger(), nullable=True),
    sa.Column('owner', sa.String(length=255), nullable=True),
    sa.Column('observed', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('transaction_id')
    )
    with op.batch_alter_table('ledger_transactions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ledger_transactions_owner'), ['owner'], unique=False)

    op.create_table('provider_snapshots',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('customer_id', sa.String(length=255), nullable=False),
    sa.Column('request_ms', sa.BigInteger(), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('provider_snapshots', schema=None) as batch_op:
        batch_op.create_index('ix_snapshots_customer_request', ['customer_id', 'request_ms'], unique=False)

    op.create_table('subscribers',
    sa.Column('customer_id', sa.String(length=255), nullable=False),
    sa.Column('last_snapshot_ms', sa.BigInteger(), nullable=True),
    sa.Column('snapshot_digest', sa.String(length=64), nullable=True),
    sa.Column('dirty', sa.Boolean(), server_default='0', nullable=False),
    sa.Column('next_check_ms', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('last_checked_ms', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.PrimaryKeyConstraint('customer_id')
    )
    with op.batch_alter_table('subscribers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_subscribers_next_check_ms'), ['next_check_ms'], unique=False)

    op.create_table('unknown_products',
    sa.Column('product_id', sa.String(length=255), nullable=False),
    sa.Column('first_seen_ms', sa.BigInteger(), nullable=False),
    sa.Column('last_seen_ms', sa.BigInteger(), nullable=False),
    sa.Column('last_customer_id', sa.String(length=255), nullable=False),
    sa.Column('sightings', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('product_id')
    )
    


def downgrade() -> None:
    
    op.drop_table('unknown_products')
    with op.batch_alter_table('subscribers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_subscribers_next_check_ms'))

    op.drop_table('subscribers')
    with op.batch_alter_table('provider_snapshots', schema=None) as batch_op:
        batch_op.drop_index('ix_snapshots_customer_request')

    op.drop_table('provider_snapshots')
    with op.batch_alter_table('ledger_transactions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ledger_transactions_owner'))

    op.drop_table('ledger_transactions')
    with op.batch_alter_table('inbox_events', schema=None) as batch_op:
        batch_op.drop_index('ix_inbox_status_received')

    op.drop_table('inbox_events')
    with op.batch_alter_table('identities', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_identities_customer_id'))

    op.drop_table('identities')
    with op.batch_alter_table('grants', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_grants_expires_ms'))

    op.drop_table('grants')
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_customer')
        batch_op.drop_index('ix_audit_at')

    op.drop_table('audit_log')
    
