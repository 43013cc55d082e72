"""SqlLedgerStore: the engine's LedgerStore port on SQLAlchemy, inside one open transaction.

The reconcile path (lock, ledger, snapshot, grants, audit, check time) uses Core statements
on the tables, not ORM objects: a changed reconcile spent most of its CPU in the ORM's unit of
work (identity map, flush planning) for a dozen rows. Stores persist and read, nothing more:
the sink outbox and the change notice are convergence's own steps (engine/reconcile.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Table, TextClause, bindparam, delete, insert, or_, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from engine.access import Access
from engine.facts import SubscriberSnapshot, Transaction
from engine.plan import Action
from engine.ports import Cause, CustomerState, UnchangedRule
from persistence.models import AuditEntry, Grant, Identity, LedgerTransaction, ProviderSnapshot, Subscriber


def _access_json(access: Access | None) -> str | None:
    if access is None:
        return None
    return json.dumps({"mode": access.mode, "expires_ms": access.expires_ms, "sources": list(access.sources)})


def grant_to_access(row: Grant) -> Access:
    return Access(row.resource, row.mode, row.expires_ms, tuple(json.loads(row.sources or "[]")))


_LEDGER = cast(Table, LedgerTransaction.__table__)
_GRANTS = cast(Table, Grant.__table__)
_SUBSCRIBERS = cast(Table, Subscriber.__table__)
_LEDGER_FIELDS = (
    "product_id",
    "kind",
    "original_transaction_id",
    "store",
    "is_sandbox",
    "purchased_ms",
    "period_type",
    "ownership",
    "expires_ms",
    "grace_expires_ms",
    "refunded_ms",
    "owner",
)
_SELECT_LEDGER = select(_LEDGER.c.transaction_id, *(_LEDGER.c[f] for f in _LEDGER_FIELDS), _LEDGER.c.observed)
# Built once: building a statement (and its cache key) cost as much CPU as running it.
_OWNED_BY = _LEDGER.c.owner.in_(bindparam("owners", expanding=True))
_NAMED = _LEDGER.c.transaction_id.in_(bindparam("ids", expanding=True))
_LEDGER_READS = {
    "owned": _SELECT_LEDGER.where(_OWNED_BY),
    "named": _SELECT_LEDGER.where(_NAMED),
    "both": _SELECT_LEDGER.where(or_(_OWNED_BY, _NAMED)),
}
# On PostgreSQL the rows are locked as they are read, in id order. The customer's own row lock
# does not cover a transaction two customers share (a TRANSFER moved it): without this, two
# reconciles (two sweep threads or processes, or a sweep and an event) could both merge their
# snapshot into the same old row and the later write would drop the other's newer facts.
_LEDGER_READS_LOCKED = {k: v.order_by(_LEDGER.c.transaction_id).with_for_update() for k, v in _LEDGER_READS.items()}
_SELECT_CUSTOMER = select(
    _SUBSCRIBERS.c.customer_id,
    _SUBSCRIBERS.c.last_snapshot_ms,
    _SUBSCRIBERS.c.snapshot_digest,
    _SUBSCRIBERS.c.dirty,
    _SUBSCRIBERS.c.next_change_ms,
    _SUBSCRIBERS.c.projection_key,
).where(_SUBSCRIBERS.c.customer_id == bindparam("cid"))
_SELECT_GRANTS = (
    select(_GRANTS.c.resource, _GRANTS.c.mode, _GRANTS.c.expires_ms, _GRANTS.c.sources)
    .where(_GRANTS.c.customer_id == bindparam("cid"))
    .order_by(_GRANTS.c.resource)
)


_SETTLE_CANDIDATES = select(
    _SUBSCRIBERS.c.customer_id,
    _SUBSCRIBERS.c.last_snapshot_ms,
    _SUBSCRIBERS.c.snapshot_digest,
    _SUBSCRIBERS.c.dirty,
    _SUBSCRIBERS.c.next_change_ms,
    _SUBSCRIBERS.c.projection_key,
).where(_SUBSCRIBERS.c.customer_id.in_(bindparam("ids", expanding=True)))
# Rows another transaction holds (an event being processed) are skipped, not waited for.
_SETTLE_CANDIDATES_LOCKED = _SETTLE_CANDIDATES.order_by(_SUBSCRIBERS.c.customer_id).with_for_update(skip_locked=True)
_SETTLE = (
    update(_SUBSCRIBERS)
    .where(_SUBSCRIBERS.c.customer_id == bindparam("cid"))
    .values(last_checked_ms=bindparam("checked"), next_check_ms=bindparam("next_check"), dirty=False, read_failures=0)
)


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)


def _upsert(table: Any, key: Sequence[str], columns: Sequence[str]) -> TextClause:
    """INSERT … ON CONFLICT (key) DO UPDATE of ``columns``, as text: the same SQL on PostgreSQL
    and SQLite (3.24+), and cached by SQLAlchemy, where the dialects' ``on_conflict_do_update``
    constructs are not (they were compiled again on every execution)."""
    names = [*key, *columns]
    return text(
        f'INSERT INTO "{table.name}" ({_quoted(names)}) VALUES ({", ".join(":" + n for n in names)}) '
        f"ON CONFLICT ({_quoted(key)}) DO UPDATE SET {', '.join(f'{chr(34)}{c}{chr(34)} = excluded.{chr(34)}{c}{chr(34)}' for c in columns)}"
    )


_insert_ignore_sql: dict[tuple[str, tuple[str, ...]], TextClause] = {}


def _insert_ignore(table: Any, columns: Sequence[str]) -> TextClause:
    """INSERT … ON CONFLICT DO NOTHING, as text (see ``_upsert``)."""
    key = (table.name, tuple(columns))
    stmt = _insert_ignore_sql.get(key)
    if stmt is None:
        stmt = _insert_ignore_sql[key] = text(
            f'INSERT INTO "{table.name}" ({_quoted(columns)}) VALUES ({", ".join(":" + c for c in columns)}) ON CONFLICT DO NOTHING'
        )
    return stmt


_SIGHT_UNKNOWN_PRODUCT = text(
    'INSERT INTO "unknown_products" ("product_id", "first_seen_ms", "last_seen_ms", "last_customer_id", "sightings") '
    "VALUES (:product_id, :now_ms, :now_ms, :customer_id, 1) "
    'ON CONFLICT ("product_id") DO UPDATE SET "last_seen_ms" = excluded."last_seen_ms", '
    '"last_customer_id" = excluded."last_customer_id", "sightings" = "unknown_products"."sightings" + 1'
)
_UPSERT_LEDGER = _upsert(_LEDGER, ["transaction_id"], [*_LEDGER_FIELDS, "observed"])
_UPSERT_GRANT = _upsert(_GRANTS, ["customer_id", "resource"], ["mode", "expires_ms", "sources", "updated_ms"])
_DELETE_GRANT = delete(_GRANTS).where(_GRANTS.c.customer_id == bindparam("cid"), _GRANTS.c.resource == bindparam("res"))
_INSERT_AUDIT = insert(cast(Table, AuditEntry.__table__))
_INSERT_SNAPSHOT = insert(cast(Table, ProviderSnapshot.__table__))


def _to_domain(row: Any) -> Transaction:
    return Transaction(
        transaction_id=row.transaction_id,
        **{f: getattr(row, f) for f in _LEDGER_FIELDS},
        observed=json.loads(row.observed or "{}"),
    )


class SqlLedgerStore:
    """LedgerStore over one Session whose transaction the caller owns."""

    def __init__(self, session: Session):
        self.session = session
        self._dialect = session.get_bind().dialect.name
        self._postgres = self._dialect == "postgresql"
        self._snapshot_marks: dict[str, dict[str, object]] = {}
        self._lock_stmt = _SELECT_CUSTOMER.with_for_update() if self._postgres else _SELECT_CUSTOMER
        # Core statements go to the session's connection directly (same transaction): the
        # Session's execute layer cost a tenth of a reconcile's CPU for rows it does not track.
        self._conn = session.connection()

    def lock_customer(self, customer_id: str) -> CustomerState:
        row = self._conn.execute(self._lock_stmt, {"cid": customer_id}).one_or_none()
        if row is None:
            self._insert_ignore(Subscriber, {"customer_id": customer_id, "dirty": False, "next_check_ms": 0})
            row = self._conn.execute(self._lock_stmt, {"cid": customer_id}).one()
        return CustomerState(*row)

    def _insert_ignore(self, model: Any, values: Mapping[str, Any]) -> None:
        self._conn.execute(_insert_ignore(model.__table__, sorted(values)), dict(values))

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
        reads = _LEDGER_READS_LOCKED if self._postgres else _LEDGER_READS
        if customers and ids:
            rows = self._conn.execute(reads["both"], {"owners": customers, "ids": ids})
        elif customers:
            rows = self._conn.execute(reads["owned"], {"owners": customers})
        elif ids:
            rows = self._conn.execute(reads["named"], {"ids": ids})
        else:
            return {}
        return {row.transaction_id: _to_domain(row) for row in rows}

    def save_transactions(self, transactions: Sequence[Transaction]) -> None:
        """Upsert the merged transactions (one statement for all of them)."""
        if not transactions:
            return
        rows = [
            {
                "transaction_id": tx.transaction_id,
                **{f: getattr(tx, f) for f in _LEDGER_FIELDS},
                "observed": json.dumps(dict(tx.observed), sort_keys=True),
            }
            for tx in transactions
        ]
        self._conn.execute(_UPSERT_LEDGER, rows)

    def save_snapshot(self, customer_id: str, request_ms: int, digest: str, body: Mapping[str, Any]) -> None:
        self._conn.execute(
            _INSERT_SNAPSHOT,
            {
                "customer_id": customer_id,
                "request_ms": request_ms,
                "digest": digest,
                "body": json.dumps(body, sort_keys=True),
            },
        )
        # Written with the check time by mark_checked: one UPDATE of the subscriber per reconcile.
        self._snapshot_marks[customer_id] = {"last_snapshot_ms": request_ms, "snapshot_digest": digest}

    def granted(self, customer_id: str) -> list[Access]:
        return [
            Access(row.resource, row.mode, row.expires_ms, tuple(json.loads(row.sources or "[]")))
            for row in self._conn.execute(_SELECT_GRANTS, {"cid": customer_id})
        ]

    def apply(self, customer_id: str, actions: Sequence[Action], cause: Cause, now_ms: int) -> None:
        if not actions:
            return
        upserts = []
        for action in actions:
            after = action.after
            if after is None:
                self._conn.execute(_DELETE_GRANT, {"cid": customer_id, "res": action.resource})
            else:
                upserts.append(
                    {
                        "customer_id": customer_id,
                        "resource": action.resource,
                        "mode": after.mode,
                        "expires_ms": after.expires_ms,
                        "sources": json.dumps(list(after.sources)),
                        "updated_ms": now_ms,
                    }
                )
        if upserts:
            self._conn.execute(_UPSERT_GRANT, upserts)
        self._conn.execute(
            _INSERT_AUDIT,
            [
                {
                    "at_ms": now_ms,
                    "customer_id": customer_id,
                    "resource": action.resource,
                    "action": action.kind,
                    "before": _access_json(action.before),
                    "after": _access_json(action.after),
                    "cause_kind": cause.kind,
                    "cause_ref": cause.ref[:255],
                    "drift_kind": cause.drift_kind(action),
                }
                for action in actions
            ],
        )

    def record_unknown_products(self, customer_id: str, product_ids: Sequence[str], now_ms: int) -> None:
        """One upsert per product, counting in the database: concurrent reconciles of two
        customers holding the same new product neither collide nor lose a sighting."""
        self._conn.execute(
            _SIGHT_UNKNOWN_PRODUCT,
            [{"product_id": p, "now_ms": now_ms, "customer_id": customer_id} for p in sorted(set(product_ids))],
        )

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
        if not dirty:
            values["read_failures"] = 0  # the provider answered: its backoff starts over
        values.update(self._snapshot_marks.pop(customer_id, {}))
        if projection is not None:
            values["next_change_ms"], values["projection_key"] = projection
        self._conn.execute(_mark_checked(tuple(sorted(values))), {"cid": customer_id, **values})

    def settle_unchanged(
        self, snapshots: Mapping[str, SubscriberSnapshot], rule: UnchangedRule, now_ms: int
    ) -> set[str]:
        candidates = {cid: snap for cid, snap in snapshots.items() if snap.customer_id == cid}
        if not candidates:
            return set()
        stmt = _SETTLE_CANDIDATES_LOCKED if self._postgres else _SETTLE_CANDIDATES
        checks: list[dict[str, Any]] = []
        for row in self._conn.execute(stmt, {"ids": sorted(candidates)}):
            state = CustomerState(*row)
            check_at = rule(state, candidates[state.customer_id])
            if check_at is not None:
                checks.append({"cid": state.customer_id, "checked": now_ms, "next_check": check_at})
        if checks:
            self._conn.execute(_SETTLE, checks)
        return {str(c["cid"]) for c in checks}


_mark_checked_stmts: dict[tuple[str, ...], Any] = {}


def _mark_checked(columns: tuple[str, ...]) -> Any:
    """UPDATE subscribers SET <columns> WHERE customer_id = :cid, built once per column set."""
    stmt = _mark_checked_stmts.get(columns)
    if stmt is None:
        stmt = _mark_checked_stmts[columns] = (
            update(_SUBSCRIBERS)
            .where(_SUBSCRIBERS.c.customer_id == bindparam("cid"))
            .values({c: bindparam(c) for c in columns})
        )
    return stmt


def ledger_owners(factory: sessionmaker[Session], transaction_ids: Sequence[str]) -> dict[str, str | None]:
    """The current owner of each of these ledger transactions (those the ledger knows)."""
    if not transaction_ids:
        return {}
    with factory() as session:
        rows = session.execute(
            select(LedgerTransaction.transaction_id, LedgerTransaction.owner).where(
                LedgerTransaction.transaction_id.in_(list(transaction_ids))
            )
        )
        return {str(tx_id): owner for tx_id, owner in rows}
