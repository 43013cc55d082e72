"""project_access: the access a customer's ledger transactions grant at ``now``. Pure.

Policies (design.md): ``period`` follows the subscription period's expiry extended by grace;
``credit`` adds the product's days once per paid transaction, stacking after credit still
running for the same resource; ``lifetime`` lasts until refunded or revoked. Refunded
transactions grant nothing; sandbox transactions grant nothing unless ``grant_sandbox``. A
product missing from the catalog grants nothing and is reported, never raised.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from engine.access import Access
from engine.catalog import DAY_MS, Catalog
from engine.facts import Transaction


@dataclass(frozen=True)
class Projection:
    accesses: tuple[Access, ...]  # sorted by resource, at most one per resource
    unknown_products: tuple[str, ...]  # store product ids the catalog lacks
    # The earliest future instant at which this projection changes by itself (an expiry).
    next_change_ms: int | None


@dataclass(frozen=True)
class _Candidate:
    resource: str
    mode: str
    expires_ms: int | None
    source: str


def project_access(
    transactions: Iterable[Transaction],
    catalog: Catalog,
    now_ms: int,
    *,
    grant_sandbox: bool = False,
) -> Projection:
    """Compute the customer's access at ``now_ms`` from the transactions the customer owns."""
    candidates: list[_Candidate] = []
    credits: dict[str, list[tuple[int, str, str, int]]] = {}  # resource -> (purchased, tx, mode, days)
    unknown: set[str] = set()
    for tx in sorted(transactions, key=lambda t: t.transaction_id):
        if tx.product_id is None or tx.is_refunded:
            continue
        if tx.is_sandbox and not grant_sandbox:
            continue
        product = catalog.product_for(tx.product_id)
        if product is None:
            unknown.add(tx.product_id)
            continue
        family_shared = (tx.ownership or "").upper() == "FAMILY_SHARED"
        if family_shared and not product.family_shareable:
            continue
        for rule in product.grants:
            if rule.policy == "lifetime":
                candidates.append(_Candidate(rule.resource, rule.mode, None, tx.transaction_id))
            elif rule.policy == "period":
                candidates.append(_Candidate(rule.resource, rule.mode, tx.access_end_ms, tx.transaction_id))
            elif rule.policy == "credit" and tx.is_paid:
                purchased = tx.purchased_ms if tx.purchased_ms is not None else 0
                credits.setdefault(rule.resource, []).append((purchased, tx.transaction_id, rule.mode, rule.days))
    for resource, entries in credits.items():
        # Each transaction credits once (keyed by id); order by purchase so the fold is stable.
        chain_end: int | None = None
        for purchased, tx_id, mode, days in sorted(set(entries)):
            start = purchased if chain_end is None else max(purchased, chain_end)
            chain_end = start + days * DAY_MS
            candidates.append(_Candidate(resource, mode, chain_end, tx_id))
    return _merge(candidates, catalog, now_ms, tuple(sorted(unknown)))


def _merge(candidates: list[_Candidate], catalog: Catalog, now_ms: int, unknown: tuple[str, ...]) -> Projection:
    """One access per resource: the longest expiry, the highest mode, every active source kept."""
    by_resource: dict[str, list[_Candidate]] = {}
    next_change: int | None = None
    for c in candidates:
        if c.expires_ms is not None and c.expires_ms <= now_ms:
            continue
        by_resource.setdefault(c.resource, []).append(c)
        if c.expires_ms is not None and (next_change is None or c.expires_ms < next_change):
            next_change = c.expires_ms
    accesses = []
    for resource in sorted(by_resource):
        group = by_resource[resource]
        expires: int | None = 0
        for c in group:
            expires = None if c.expires_ms is None or expires is None else max(expires, c.expires_ms)
        mode = max((c.mode for c in group), key=lambda m: (catalog.mode_rank_of(m), m))
        sources = tuple(sorted({c.source for c in group}))
        accesses.append(Access(resource, mode, expires, sources))
    return Projection(tuple(accesses), unknown, next_change)
