"""SQLAlchemy 2.x models: inbox, subscribers, identities, snapshots, the transaction ledger,
grants, audit log and unknown products. The same code runs on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer, "sqlite")


class Base(DeclarativeBase):
    pass


class InboxEvent(Base):
    """A received webhook, stored raw before anything else (the durable intake)."""

    __tablename__ = "inbox_events"
    __table_args__ = (
        UniqueConstraint("provider", "event_id", name="uq_inbox_provider_event"),
        Index("ix_inbox_status_received", "status", "received_at"),
        Index("ix_inbox_status_next_attempt", "status", "next_attempt_ms"),
        Index("ix_inbox_type_id", "event_type", "id"),  # console: filtered by type
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(String(32))
    event_id: Mapped[str | None] = mapped_column(String(200))  # None when malformed
    event_type: Mapped[str | None] = mapped_column(String(64))
    # received | processing | retrying (not final), then processed | degraded | ignored |
    # malformed | dead (a dead letter: kept with its error, replayed only by an operator)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # While processing: when the claim lapses (a killed worker's row is taken again then).
    lease_until_ms: Mapped[int | None] = mapped_column(BigInteger)
    lease_holder: Mapped[str | None] = mapped_column(String(128))  # host:pid of the processing worker
    # While retrying: when the next attempt is due (the redrive sends it if its message is lost).
    next_attempt_ms: Mapped[int | None] = mapped_column(BigInteger)
    error_kind: Mapped[str | None] = mapped_column(String(16))  # transient | terminal | bug
    progress: Mapped[str | None] = mapped_column(Text)  # JSON: users already read (resumable)
    replays: Mapped[int] = mapped_column(
        Integer, server_default="0"
    )  # no Python default: the intake's INSERT names its columns


class InboxEventUser(Base):
    """A user a webhook names (recorded when it is processed): inbox filters and learner history."""

    __tablename__ = "inbox_event_users"
    __table_args__ = (Index("ix_inbox_event_users_user", "app_user_id", "inbox_id"),)

    inbox_id: Mapped[int] = mapped_column(BigId, primary_key=True)
    app_user_id: Mapped[str] = mapped_column(String(255), primary_key=True)


class OperatorAction(Base):
    """Something an operator did (replay, import, sync...), by whom: the operator audit log."""

    __tablename__ = "operator_actions"
    __table_args__ = (Index("ix_operator_actions_at", "at_ms"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at_ms: Mapped[int] = mapped_column(BigInteger)
    actor: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(255), default="", server_default="")
    detail: Mapped[str | None] = mapped_column(Text)


class Subscriber(Base):
    """A customer as the provider knows it (keyed by RevenueCat's original_app_user_id)."""

    __tablename__ = "subscribers"
    __table_args__ = (
        # The urgent checks the sweep selects first (persistence/subscribers.py select_due):
        # dirty customers by check time, and customers whose projected expiry has passed since
        # their last read, by that expiry.
        Index(
            "ix_subscribers_dirty_check",
            "next_check_ms",
            postgresql_where=text("dirty"),
            sqlite_where=text("dirty = 1"),
        ),
        Index(
            "ix_subscribers_next_change",
            "next_change_ms",
            postgresql_where=text("next_change_ms IS NOT NULL"),
            sqlite_where=text("next_change_ms IS NOT NULL"),
        ),
    )

    customer_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    last_snapshot_ms: Mapped[int | None] = mapped_column(BigInteger)
    snapshot_digest: Mapped[str | None] = mapped_column(String(64))
    dirty: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    next_check_ms: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0", index=True)
    last_checked_ms: Mapped[int | None] = mapped_column(BigInteger)
    # The last projection: when it next changes by itself (an expiry) and what it was computed
    # under (catalog and policy). While neither moved and the snapshot is unchanged, a
    # reconcile has nothing to compute (the fast path of engine.reconcile).
    next_change_ms: Mapped[int | None] = mapped_column(BigInteger)
    projection_key: Mapped[str | None] = mapped_column(String(64))
    # Provider reads that failed in a row: each one pushes the next read further out.
    read_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class HistoryReadMark(Base):
    """Per customer, the last decision on reading its REST v2 history (engine/history.py): the v1
    answer it was taken on, why a history was needed, and what the last history read answered,
    so that a history is read again only when v1 answers something new (or a recurring need's
    interval has passed)."""

    __tablename__ = "history_marks"

    customer_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    v1_digest: Mapped[str] = mapped_column(String(64))  # the v1 snapshot the decision was taken on
    checked_ms: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str | None] = mapped_column(String(32))  # None: no history needed at that digest
    recurring: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    read_ms: Mapped[int | None] = mapped_column(BigInteger)  # the last v2 history read
    answer_digest: Mapped[str | None] = mapped_column(String(64))  # what it answered
    requests: Mapped[int | None] = mapped_column(Integer)  # what it cost


class Identity(Base):
    """Any app_user_id (alias, original or last seen) → the customer it belongs to."""

    __tablename__ = "identities"

    app_user_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(255), index=True)


class ProviderSnapshot(Base):
    """A provider snapshot, kept only when it differs from the customer's previous one."""

    __tablename__ = "provider_snapshots"
    __table_args__ = (Index("ix_snapshots_customer_request", "customer_id", "request_ms"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(String(255))
    request_ms: Mapped[int] = mapped_column(BigInteger)
    digest: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class LedgerTransaction(Base):
    """The ledger's merged view of one store transaction (engine.facts.Transaction)."""

    __tablename__ = "ledger_transactions"

    transaction_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    product_id: Mapped[str | None] = mapped_column(String(255))
    kind: Mapped[str | None] = mapped_column(String(20))
    original_transaction_id: Mapped[str | None] = mapped_column(String(255))
    store: Mapped[str | None] = mapped_column(String(32))
    is_sandbox: Mapped[bool | None] = mapped_column(Boolean)
    purchased_ms: Mapped[int | None] = mapped_column(BigInteger)
    period_type: Mapped[str | None] = mapped_column(String(20))
    ownership: Mapped[str | None] = mapped_column(String(20))
    expires_ms: Mapped[int | None] = mapped_column(BigInteger)
    grace_expires_ms: Mapped[int | None] = mapped_column(BigInteger)
    refunded_ms: Mapped[int | None] = mapped_column(BigInteger)
    owner: Mapped[str | None] = mapped_column(String(255), index=True)
    observed: Mapped[str] = mapped_column(Text, default="{}")  # JSON: state field -> observed_ms


class Grant(Base):
    """Access we granted: what apps read over HTTP and what sinks mirror."""

    __tablename__ = "grants"

    customer_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    resource: Mapped[str] = mapped_column(String(255), primary_key=True)
    mode: Mapped[str] = mapped_column(String(64))
    expires_ms: Mapped[int | None] = mapped_column(BigInteger, index=True)
    sources: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of transaction ids
    updated_ms: Mapped[int] = mapped_column(BigInteger)


class AuditEntry(Base):
    """One change of access: before, after, and the cause (event, sweep, request...)."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_customer", "customer_id", "id"),
        Index("ix_audit_at", "at_ms"),
        Index("ix_audit_cause_ref", "cause_ref"),  # console: what a webhook caused
        Index("ix_audit_drift_at", "drift_kind", "at_ms"),  # drift by kind over time
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at_ms: Mapped[int] = mapped_column(BigInteger)
    customer_id: Mapped[str] = mapped_column(String(255))
    resource: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(20))
    before: Mapped[str | None] = mapped_column(Text)
    after: Mapped[str | None] = mapped_column(Text)
    cause_kind: Mapped[str] = mapped_column(String(16))
    cause_ref: Mapped[str] = mapped_column(String(255), default="")
    drift_kind: Mapped[str | None] = mapped_column(String(32))


class UnknownProduct(Base):
    """A store product id the catalog lacks: recorded (and alerted), never dropped."""

    __tablename__ = "unknown_products"

    product_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    first_seen_ms: Mapped[int] = mapped_column(BigInteger)
    last_seen_ms: Mapped[int] = mapped_column(BigInteger)
    last_customer_id: Mapped[str] = mapped_column(String(255))
    sightings: Mapped[int] = mapped_column(Integer, default=1)


# --- Sinks (Open edX): course mappings, LMS usernames, the sink outbox (migration 0002) -------


class CourseMappingRow(Base):
    """A granted resource → an Open edX course run, paid mode and revocation (engine.enrollment)."""

    __tablename__ = "course_mappings"

    resource: Mapped[str] = mapped_column(String(255), primary_key=True)
    course_run_id: Mapped[str] = mapped_column(String(255))  # unique: checked on import
    mode: Mapped[str] = mapped_column(String(64))
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default="1")
    expires_ms: Mapped[int | None] = mapped_column(BigInteger)
    on_revoke: Mapped[str] = mapped_column(String(16), default="audit", server_default="audit")
    # Set once the revocations due at ``expires_ms`` have been written to the outbox.
    expiry_enqueued: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    updated_ms: Mapped[int] = mapped_column(BigInteger)


class LmsUser(Base):
    """The LMS username of an app_user_id, when it differs from the app_user_id itself."""

    __tablename__ = "lms_users"

    app_user_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    username: Mapped[str] = mapped_column(String(255))


class SinkOutboxRow(Base):
    """One desired enrollment to send to a sink, written in the grant's own transaction.

    ``id`` is the sequence: a customer's rows are written under that customer's lock, so id
    order is commit order, and the drain applies rows in id order per (customer, resource).
    """

    __tablename__ = "sink_outbox"
    __table_args__ = (
        Index("ix_sink_outbox_group", "status", "customer_id", "resource", "id"),
        Index("ix_sink_outbox_history", "customer_id", "resource"),
        Index("ix_sink_outbox_status_id", "status", "id"),  # console and CLI: by status, newest first
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    sink: Mapped[str] = mapped_column(String(32))
    customer_id: Mapped[str] = mapped_column(String(255))
    resource: Mapped[str] = mapped_column(String(255))
    course_run_id: Mapped[str] = mapped_column(String(255))
    mode: Mapped[str | None] = mapped_column(String(64))  # None: a deactivation, the mode left as it is
    is_active: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | done | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_ms: Mapped[int] = mapped_column(BigInteger)
    leased_until_ms: Mapped[int | None] = mapped_column(BigInteger)
    cause_kind: Mapped[str] = mapped_column(String(16))
    cause_ref: Mapped[str] = mapped_column(String(255), default="")
    username: Mapped[str | None] = mapped_column(String(255))  # as resolved when sent
    last_error: Mapped[str | None] = mapped_column(Text)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    done_ms: Mapped[int | None] = mapped_column(BigInteger)


# --- Discovery (REST API v2): passes over the provider's customer list (migration 0007) -------


class DiscoveryPass(Base):
    """One pass over the provider's customer list: where it stands (``cursor``, the last
    customer id of the last page done) and what it found. At most one pass is open at a time
    (``open`` is True while it runs, NULL once finished: the unique index admits one True)."""

    __tablename__ = "discovery_passes"
    __table_args__ = (
        UniqueConstraint("open", name="uq_discovery_passes_open"),
        Index("ix_discovery_passes_finished", "finished_ms"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    open: Mapped[bool | None] = mapped_column(Boolean)
    started_ms: Mapped[int] = mapped_column(BigInteger)
    finished_ms: Mapped[int | None] = mapped_column(BigInteger)
    cursor: Mapped[str | None] = mapped_column(String(255))  # None: from the first page
    pages: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    customers: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # listed
    new_customers: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # unknown to the engine
    repaired: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # of them, granted access
    failed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # left to the sweep
    # The run working on the pass holds it until then (a crashed run's lease runs out).
    leased_until_ms: Mapped[int | None] = mapped_column(BigInteger)
    last_error: Mapped[str | None] = mapped_column(Text)  # why the last run stopped early
    updated_ms: Mapped[int] = mapped_column(BigInteger)
