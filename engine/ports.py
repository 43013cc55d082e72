"""The engine's ports: what reconcile needs from storage, the LMS and the provider (Protocols)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from engine.access import Access
from engine.facts import SubscriberSnapshot, Transaction
from engine.plan import UNDISCOVERED_CUSTOMER, Action

CauseKind = Literal["event", "sweep", "request", "expiry", "operator", "degraded", "discovery"]


@dataclass(frozen=True)
class Cause:
    """Why a reconcile ran: which event, sweep, request or operator command."""

    kind: CauseKind
    ref: str = ""

    @property
    def is_drift_repair(self) -> bool:
        """Changes made without a webhook telling us are drift: something was missed."""
        return self.kind in {"sweep", "operator", "discovery"}

    def drift_kind(self, action: Action) -> str | None:
        """The drift ``action`` repairs when made for this cause; None when it is no drift (a
        webhook, a client or an expiry asked for it). Access granted by discovery is a customer
        no webhook ever named: ``undiscovered_customer``, whatever the resource."""
        if not self.is_drift_repair:
            return None
        if self.kind == "discovery" and action.kind == "grant":
            return UNDISCOVERED_CUSTOMER
        return action.drift_kind


@dataclass(frozen=True)
class CustomerState:
    customer_id: str
    last_snapshot_ms: int | None
    snapshot_digest: str | None
    dirty: bool
    next_change_ms: int | None = None  # when the last projection changes by itself
    projection_key: str | None = None  # the catalog and policy it was computed under


class SubscriberSource(Protocol):
    """The provider: the current state of one subscriber, or TransientError/TerminalError."""

    def get_subscriber(self, app_user_id: str) -> Mapping[str, Any]: ...


# Given a customer's stored state and a fresh snapshot: the next check time when the snapshot
# needs no work at all, else None (engine.reconcile.unchanged_check_ms with its policy bound).
UnchangedRule = Callable[[CustomerState, SubscriberSnapshot], int | None]


class LedgerStore(Protocol):
    """Storage inside one open transaction; the caller commits (convention 3)."""

    def lock_customer(self, customer_id: str) -> CustomerState: ...

    def record_identities(self, identities: Mapping[str, str]) -> None: ...

    def customer_for(self, app_user_id: str) -> str | None: ...

    def transactions(self, customer_ids: Iterable[str], transaction_ids: Iterable[str]) -> dict[str, Transaction]: ...

    def save_transactions(self, transactions: Sequence[Transaction]) -> None: ...

    def save_snapshot(self, customer_id: str, request_ms: int, digest: str, body: Mapping[str, Any]) -> None:
        """Keep the snapshot; the customer's latest-snapshot marks are written by the next mark_checked."""

    def granted(self, customer_id: str) -> list[Access]: ...

    def apply(self, customer_id: str, actions: Sequence[Action], cause: Cause, now_ms: int) -> None: ...

    def record_unknown_products(self, customer_id: str, product_ids: Sequence[str], now_ms: int) -> None: ...

    def mark_checked(
        self,
        customer_id: str,
        *,
        now_ms: int,
        next_check_ms: int,
        dirty: bool,
        projection: tuple[int | None, str] | None = None,
    ) -> None:
        """Record the check; ``projection`` = (next_change_ms, projection_key) when one was computed."""

    def settle_unchanged(
        self, snapshots: Mapping[str, SubscriberSnapshot], rule: UnchangedRule, now_ms: int
    ) -> set[str]:
        """Move only the check time of every customer whose snapshot ``rule`` says needs no work,
        in one go; the customers settled. Customers another transaction holds are skipped (they
        go through ``reconcile``, which waits for them), and so are aliases (an id that is not
        the snapshot's customer: ``reconcile`` records the identity)."""
        ...


class SinkOutbox(Protocol):
    """Where grant changes for a sink (the LMS) are written, in the grant's own transaction."""

    def record(self, customer_id: str, actions: Sequence[Action], cause: Cause, now_ms: int) -> int:
        """Write what the sink must change for these actions; the number of changes written."""
        ...


class AccessChanges(Protocol):
    """Customers whose access changed in this transaction, announced once it commits."""

    def note(self, customer_id: str) -> None: ...


class UnitOfWork(Protocol):
    """One transaction and the stores over it; committed when the block ends without error."""

    @property
    def ledger(self) -> LedgerStore: ...

    @property
    def outbox(self) -> SinkOutbox: ...

    @property
    def changes(self) -> AccessChanges: ...


UnitOfWorkFactory = Callable[[], AbstractContextManager[UnitOfWork]]


@dataclass(frozen=True)
class EnrollmentState:
    """An enrollment of one user in one course run: its mode and whether it is active.

    Used both for what the LMS holds and for what the engine wants it to hold (see
    ``engine.enrollment.plan_enrollment`` for how a desired state is read). ``mode`` is None only
    in a desired deactivation: the enrollment keeps whatever mode it has.
    """

    mode: str | None
    is_active: bool


class CourseSink(Protocol):
    """An LMS that holds course enrollments (the engine's grants table is the truth; a sink
    mirrors it through an outbox written in the grant's own transaction).

    ``apply`` makes the enrollment of ``username`` in ``course_run_id`` match ``desired`` and
    returns what the LMS then holds; it must be idempotent (the outbox re-sends after a crash).
    ``read`` returns what the LMS holds now (None: no enrollment), for drift checks.
    Both raise TransientError (unreachable, 5xx, 429: retried with backoff), TerminalError
    (this row can never succeed: unknown user or course, mode not offered) or SinkAuthError.
    """

    name: str

    def apply(self, username: str, course_run_id: str, desired: EnrollmentState) -> EnrollmentState | None: ...

    def read(self, username: str, course_run_id: str) -> EnrollmentState | None: ...
