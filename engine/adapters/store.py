"""SqlLedgerStore: the engine's LedgerStore port on SQLAlchemy, inside one open transaction."""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping, Sequence

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from engine.access import Access
from engine.adapters.models import AuditEntry, Grant, Identity, LedgerTransaction, ProviderSnapshot, Subscriber, UnknownProduct
from engine.adapters.outbox import enqueue_grant_changes
from engine.facts import Transaction
from engine.plan import Action
from engine.ports import Cause, CustomerState


def _access_json(access: Access | None) -> str | None:
    if access is None:
        return None
    return json.dumps({"mode": access.mode, "expires_ms": access.expires_ms, "sources": list(access.sources)})


def grant_to_access(row: Grant) -> Access:
    return Access(row.resource, row.mode, row.expires_ms, tuple(json.loads(row.sources or "[]")))


def _to_domain(row: LedgerTransaction) -> Transaction:
    return Transaction(
        transaction_id=row.transaction_id,
        product_id=row.product_id,
        kind=row.kind,  # type: ignore[arg-type]
        original_transaction_id=row.original_transaction_id,
        store=row.store,
        is_sandbox=row.is_sandbox,
        purchased_ms=row.purchased_ms,
        period_type=row.period_type,
        ownership=row.ownership,
        expires_ms=row.expires_ms,
        grace_expires_ms=row.grace_expires_ms,
        refunded_ms=row.refunded_ms,
        owner=row.owner,
        observed=json.loads(row.observed or "{}"),
    )


class SqlLedgerStore:
    """LedgerStore over one Session whose transaction the caller owns."""

    def __init__(self, session: Session):
        self.session = session
        self._postgres = session.get_bind().dialect.name == "postgresql"
        # The session's identity map holds rows weakly: keep the rows this unit of work read,
        # so that writing them back does not read them again.
        self._loaded: list[object] = []
        self._snapshot_marks: dict[str, dict[str, object]] = {}

    def lock_customer(self, customer_id: str) -> CustomerState:
        stmt = select(Subscriber).where(Subscriber.customer_id == customer_id)
        if self._postgres:
            stmt = stmt.with_for_update()
        row = self.session.scalars(stmt).one_or_none()
        if row is None:
            self._insert_ignore(Subscriber, {"customer_id": customer_id, "dirty": False, "next_check_ms": 0})
            row = self.session.scalars(stmt).one()
        return CustomerState(row.customer_id, row.last_snapshot_ms, row.snapshot_digest, row.dirty,
                             row.next_change_ms, row.projection_key)

    def _insert_ignore(self, model: Any, values: Mapping[str, Any]) -> None:
        dialect = self.session.get_bind().dialect.name
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        self.session.execute(insert(model).values(**values).on_conflict_do_nothing())

    def record_identities(self, identities: Mapping[str, str]) -> None:
        if not identities:
            return
        existing = {
            row.app_user_id: row
            for row in self.session.scalars(select(Identity).where(Identity.app_user_id.in_(list(identities))))
        }
        for app_user_id, customer_id in sorted(identities.items()):
            row = existing.get(app_user_id)
            if row is None:
                self._insert_ignore(Identity, {"app_user_id": app_user_id, "customer_id": customer_id})
            elif row.customer_id != customer_id:
                row.customer_id = customer_id

    def customer_for(self, app_user_id: str) -> str | None:
        return self.session.scalar(select(Identity.customer_id).where(Identity.app_user_id == app_user_id))

    def transactions(self, customer_ids: Iterable[str], transaction_ids: Iterable[str]) -> dict[str, Transaction]:
        customers, ids = list(customer_ids), list(transaction_ids)
        clauses = []
        if customers:
            clauses.append(LedgerTransaction.owner.in_(customers))
        if ids:
            clauses.append(LedgerTransaction.transaction_id.in_(ids))
        if not clauses:
            return {}
        rows = list(self.session.scalars(select(LedgerTransaction).where(or_(*clauses))))
        self._loaded.extend(rows)
        return {row.transaction_id: _to_domain(row) for row in rows}

    def save_transactions(self, transactions: Sequence[Transaction]) -> None:
        for tx in transactions:
            values = {
                "product_id": tx.product_id,
                "kind": tx.kind,
                "original_transaction_id": tx.original_transaction_id,
                "store": tx.store,
                "is_sandbox": tx.is_sandbox,
                "purchased_ms": tx.purchased_ms,
                "period_type": tx.period_type,
                "ownership": tx.ownership,
                "expires_ms": tx.expires_ms,
                "grace_expires_ms": tx.grace_expires_ms,
                "refunded_ms": tx.refunded_ms,
                "owner": tx.owner,
                "observed": json.dumps(dict(tx.observed), sort_keys=True),
            }
            row = self.session.get(LedgerTransaction, tx.transaction_id)
            if row is None:
                self.session.add(LedgerTransaction(transaction_id=tx.transaction_id, **values))
            else:
                for key, value in values.items():
                    setattr(row, key, value)
        self.session.flush()

    def save_snapshot(self, customer_id: str, request_ms: int, digest: str, body: Mapping[str, Any]) -> None:
        self.session.add(
            ProviderSnapshot(customer_id=customer_id, request_ms=request_ms, digest=digest, body=json.dumps(body, sort_keys=True))
        )
        # Written with the check time by mark_checked: one UPDATE of the subscriber per reconcile.
        self._snapshot_marks[customer_id] = {"last_snapshot_ms": request_ms, "snapshot_digest": digest}

    def granted(self, customer_id: str) -> list[Access]:
        rows = list(self.session.scalars(select(Grant).where(Grant.customer_id == customer_id).order_by(Grant.resource)))
        self._loaded.extend(rows)
        return [grant_to_access(row) for row in rows]

    def apply(self, customer_id: str, actions: Sequence[Action], cause: Cause, now_ms: int) -> None:
        for action in actions:
            row = self.session.get(Grant, (customer_id, action.resource))
            after = action.after
            if after is None:
                if row is not None:
                    self.session.delete(row)
            elif row is None:
                self.session.add(
                    Grant(
                        customer_id=customer_id,
                        resource=action.resource,
                        mode=after.mode,
                        expires_ms=after.expires_ms,
                        sources=json.dumps(list(after.sources)),
                        updated_ms=now_ms,
                    )
                )
            else:
                row.mode, row.expires_ms = after.mode, after.expires_ms
                row.sources, row.updated_ms = json.dumps(list(after.sources)), now_ms
            self.session.add(
                AuditEntry(
                    at_ms=now_ms,
                    customer_id=customer_id,
                    resource=action.resource,
                    action=action.kind,
                    before=_access_json(action.before),
                    after=_access_json(after),
                    cause_kind=cause.kind,
                    cause_ref=cause.ref[:255],
                    drift_kind=action.drift_kind if cause.is_drift_repair else None,
                )
            )
        self.session.flush()
        # Sink work (LMS enrollments) rides in the same transaction; drained after commit.
        enqueue_grant_changes(self.session, customer_id, actions, cause, now_ms)

    def record_unknown_products(self, customer_id: str, product_ids: Sequence[str], now_ms: int) -> None:
        for product_id in product_ids:
            row = self.session.get(UnknownProduct, product_id)
            if row is None:
                self.session.add(
                    UnknownProduct(
                        product_id=product_id, first_seen_ms=now_ms, last_seen_ms=now_ms, last_customer_id=customer_id, sightings=1
                    )
                )
            else:
                row.last_seen_ms, row.last_customer_id, row.sightings = now_ms, customer_id, row.sightings + 1
        self.session.flush()

    def mark_checked(
        self,
        customer_id: str,
        *,
        now_ms: int,
        next_check_ms: int,
        dirty: bool,
        projection: tuple[int | None, str] | None = None,
    ) -> None:
        values: dict[str, object] = {"last_checked_ms": now_ms, "next_check_ms": next_check_ms, "dirty": dirty}
        values.update(self._snapshot_marks.pop(customer_id, {}))
        if projection is not None:
            values["next_change_ms"], values["projection_key"] = projection
        self.session.execute(update(Subscriber).where(Subscriber.customer_id == customer_id).values(**values))
