"""indexes for the operator console's filters and reports

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # the reconciles a webhook caused (audit rows naming it), and drift by kind over time
    op.create_index("ix_audit_cause_ref", "audit_log", ["cause_ref"])
    op.create_index("ix_audit_drift_at", "audit_log", ["drift_kind", "at_ms"])
    # the inbox filtered by event type, newest first
    op.create_index("ix_inbox_type_id", "inbox_events", ["event_type", "id"])
    # the LMS outbox filtered by status, newest first
    op.create_index("ix_sink_outbox_status_id", "sink_outbox", ["status", "id"])


def downgrade() -> None:
    op.drop_index("ix_sink_outbox_status_id", table_name="sink_outbox")
    op.drop_index("ix_inbox_type_id", table_name="inbox_events")
    op.drop_index("ix_audit_drift_at", table_name="audit_log")
    op.drop_index("ix_audit_cause_ref", table_name="audit_log")
