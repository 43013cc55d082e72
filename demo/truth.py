"""What each learner paid for, from the simulator's whole purchase history, and what the engine granted.

The demo's truth must not come from one v1 snapshot: v1 shows only the latest period of each
subscription product, so a learner holding two subscriptions to one product (one came with a
transfer) looks refunded there while the older, still running one pays for access. The
simulator's full history is what the learner paid for; the engine has to converge to it.
"""

from __future__ import annotations

from sqlalchemy import select

from engine.catalog import Catalog
from engine.facts import Transaction
from engine.projection import project_access
from persistence.ledger_store import grant_to_access
from persistence.models import Grant
from simulators.revenuecat.state import ProviderState

AccessRow = tuple[str, str, int | None]  # (resource, mode, expires_ms)


def paid_access(state: ProviderState, customer_id: str, catalog: Catalog, now_ms: int) -> list[AccessRow]:
    """The access ``customer_id``'s whole purchase history pays for at ``now_ms``."""
    periods, purchases = state.purchase_history(customer_id)
    transactions = [
        Transaction(
            transaction_id=p.store_transaction_id,
            product_id=p.product_id,
            kind="subscription",
            original_transaction_id=p.original_transaction_id,
            store=p.store,
            is_sandbox=p.is_sandbox,
            purchased_ms=p.purchased_at_ms,
            period_type=p.period_type,
            ownership=p.ownership_type,
            expires_ms=p.effective_expires_at_ms(),
            grace_expires_ms=p.grace_period_expires_at_ms,
            refunded_ms=p.refunded_at_ms,
            owner=customer_id,
        )
        for p in periods
    ] + [
        Transaction(
            transaction_id=p.store_transaction_id,
            product_id=p.product_id,
            kind="non_subscription",
            store=p.store,
            is_sandbox=p.is_sandbox,
            purchased_ms=p.purchased_at_ms,
            period_type="normal",
            ownership="PURCHASED",
            refunded_ms=p.refunded_at_ms,
            owner=customer_id,
        )
        for p in purchases
    ]
    return [(a.resource, a.mode, a.expires_ms) for a in project_access(transactions, catalog, now_ms).accesses]


def customer_of(state: ProviderState, app_user_id: str) -> str:
    """The provider's customer id (original_app_user_id) for ``app_user_id``."""
    return str(state.subscriber(app_user_id)[1]["subscriber"]["original_app_user_id"])


def granted_access(runtime, customer_id: str) -> list[AccessRow]:
    """What the engine's grants table holds for ``customer_id``."""
    with runtime.session_factory() as session:
        rows = session.scalars(select(Grant).where(Grant.customer_id == customer_id).order_by(Grant.resource))
        return [(a.resource, a.mode, a.expires_ms) for a in map(grant_to_access, rows)]


def drifting(state: ProviderState, runtime, users: list[str], now_ms: int) -> list[str]:
    """The learners whose granted access differs from what their whole history pays for."""
    out = []
    for user in users:
        customer = customer_of(state, user)
        if paid_access(state, customer, runtime.catalog, now_ms) != granted_access(runtime, customer):
            out.append(user)
    return out
