"""An in-memory ledger store and unit of work (engine.ports), for testing the reconcile loop
without a database. It passes the same conformance tests as the SQL store
(tests/persistence/test_ledger_store_conformance.py), so what reconcile does with it is what it
does with SQL."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any

from engine.access import Access
from engine.facts import SubscriberSnapshot, Transaction
from engine.plan import Action
from engine.ports import Cause, CustomerState, UnchangedRule


@dataclass
class CustomerRow:
    state: CustomerState
    next_check_ms: int = 0
    last_checked_ms: int | None = None
    read_failures: int = 0


@dataclass
class MemoryData:
    """Everything the store holds: what a committed unit of work leaves behind."""

    customers: dict[str, CustomerRow] = field(default_factory=dict)
    identities: dict[str, str] = field(default_factory=dict)
    ledger: dict[str, Transaction] = field(default_factory=dict)
    snapshots: list[tuple[str, int, str, Mapping[str, Any]]] = field(default_factory=list)
    grants: dict[tuple[str, str], Access] = field(default_factory=dict)
    audit: list[tuple[int, str, Action, Cause]] = field(default_factory=list)
    unknown_products: dict[str, int] = field(default_factory=dict)
    outbox: list[tuple[str, Action, Cause]] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # announced after commit, in order


class MemoryLedgerStore:
    """LedgerStore over a MemoryData copy owned by one unit of work."""

    def __init__(self, data: MemoryData):
        self.data = data
        self._snapshot_marks: dict[str, tuple[int, str]] = {}

    def lock_customer(self, customer_id: str) -> CustomerState:
        row = self.data.customers.setdefault(customer_id, CustomerRow(CustomerState(customer_id, None, None, False)))
        return row.state

    def record_identities(self, identities: Mapping[str, str]) -> None:
        self.data.identities.update(identities)

    def customer_for(self, app_user_id: str) -> str | None:
        return self.data.identities.get(app_user_id)

    def transactions(self, customer_ids: Iterable[str], transaction_ids: Iterable[str]) -> dict[str, Transaction]:
        owners, ids = set(customer_ids), set(transaction_ids)
        return {t.transaction_id: t for t in self.data.ledger.values() if t.owner in owners or t.transaction_id in ids}

    def save_transactions(self, transactions: Sequence[Transaction]) -> None:
        for tx in transactions:
            self.data.ledger[tx.transaction_id] = tx

    def save_snapshot(self, customer_id: str, request_ms: int, digest: str, body: Mapping[str, Any]) -> None:
        self.data.snapshots.append((customer_id, request_ms, digest, body))
        self._snapshot_marks[customer_id] = (request_ms, digest)

    def granted(self, customer_id: str) -> list[Access]:
        return [a for (c, _), a in sorted(self.data.grants.items()) if c == customer_id]

    def apply(self, customer_id: str, actions: Sequence[Action], cause: Cause, now_ms: int) -> None:
        for action in actions:
            if action.after is None:
                self.data.grants.pop((customer_id, action.resource), None)
            else:
                self.data.grants[(customer_id, action.resource)] = action.after
            self.data.audit.append((now_ms, customer_id, action, cause))

    def record_unknown_products(self, customer_id: str, product_ids: Sequence[str], now_ms: int) -> None:
        for product_id in set(product_ids):
            self.data.unknown_products[product_id] = self.data.unknown_products.get(product_id, 0) + 1

    def mark_checked(
        self,
        customer_id: str,
        *,
        now_ms: int,
        next_check_ms: int,
        dirty: bool,
        projection: tuple[int | None, str] | None = None,
    ) -> None:
        row = self.data.customers[customer_id]
        state = replace(row.state, dirty=dirty)
        if customer_id in self._snapshot_marks:
            request_ms, digest = self._snapshot_marks.pop(customer_id)
            state = replace(state, last_snapshot_ms=request_ms, snapshot_digest=digest)
        if projection is not None:
            state = replace(state, next_change_ms=projection[0], projection_key=projection[1])
        row.state, row.next_check_ms, row.last_checked_ms = state, next_check_ms, now_ms
        if not dirty:
            row.read_failures = 0

    def settle_unchanged(
        self, snapshots: Mapping[str, SubscriberSnapshot], rule: UnchangedRule, now_ms: int
    ) -> set[str]:
        settled = set()
        for customer_id, snapshot in snapshots.items():
            row = self.data.customers.get(customer_id)
            if row is None or snapshot.customer_id != customer_id:
                continue
            check_at = rule(row.state, snapshot)
            if check_at is not None:
                row.state = replace(row.state, dirty=False)
                row.next_check_ms, row.last_checked_ms, row.read_failures = check_at, now_ms, 0
                settled.add(customer_id)
        return settled


class MemorySinkOutbox:
    def __init__(self, data: MemoryData):
        self.data = data

    def record(self, customer_id: str, actions: Sequence[Action], cause: Cause, now_ms: int) -> int:
        self.data.outbox.extend((customer_id, a, cause) for a in actions)
        return len(actions)


class MemoryAccessChanges:
    def __init__(self) -> None:
        self.noted: list[str] = []

    def note(self, customer_id: str) -> None:
        self.noted.append(customer_id)


class MemoryUnitOfWork:
    """Works on a copy of the data; the copy replaces it on commit, and the customers whose
    access changed are announced then (nothing on rollback)."""

    def __init__(self, database: MemoryDatabase):
        self.database = database

    def __enter__(self) -> MemoryUnitOfWork:
        self.working = copy.deepcopy(self.database.data)
        self.ledger = MemoryLedgerStore(self.working)
        self.outbox = MemorySinkOutbox(self.working)
        self.changes = MemoryAccessChanges()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.database.data = self.working
            self.database.data.changed.extend(dict.fromkeys(self.changes.noted))


class MemoryDatabase:
    """The shared state several units of work commit to (one at a time: tests are serial)."""

    def __init__(self) -> None:
        self.data = MemoryData()

    def unit_of_work(self) -> MemoryUnitOfWork:
        return MemoryUnitOfWork(self)
