"""When a customer's access depends on more than the latest period: whether to read its REST v2
history after a v1 read, and why. Pure.

v1 (``GET /v1/subscribers``) lists the latest period of each subscription product. That is all a
``period`` grant needs (access follows the latest expiry), but a product that grants per
transaction (a ``credit``: every paid period is a package of days; a ``lifetime`` grant of a
subscription) needs every period: one missed renewal is a package never credited. v2 lists every
period of an App Store or Play Store subscription by transaction id (engine/revenuecat_v2.py).

A history read costs several requests where a v1 read costs one, so it is made only where v1
shows that the ledger lacks something, for the products concerned:

* ``missed_periods``: the latest period v1 lists is not contiguous with the period before it in
  the ledger (it starts after that one's access ended): the renewals between were never seen
  (their webhooks lost, no read in time). A lapse followed by a resubscription looks the same
  from v1, and costs one history read that finds nothing more.
* ``chain_start``: the ledger holds no period of the product before the latest, yet v1 says the
  subscription began earlier (``original_purchase_date``): the customer's every webhook was
  lost, or the subscription's older periods were transferred to this customer.
* ``seen_before``: the ledger holds no period of the product before the latest, v1 says its
  chain began with it, yet the customer was seen (v1's ``first_seen``) before it began and no
  history read has looked since: an earlier subscription of the product may have ended unseen
  (every webhook of it lost) before this new one was bought; v1 lists only the new one. Most new
  subscribers were seen before buying: this costs one history read on a customer's first
  subscription of such a product (a read marks the time, so that period needs no other).
* ``older_refund``: the ledger holds a refund of an older period (not the one v1 lists) made
  before that period ended. Only v2 can show its reversal (the period's expiry growing back;
  engine/facts.py), and nothing in v1 changes when it happens: this need recurs, the history is
  read again once ``reread_ms`` has passed.

What a history read answered is kept as a mark (``HistoryMark``): while v1 answers the same
(same digest) the decision stands, and nothing is read again (but a recurring need, on its
interval).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from engine.catalog import Catalog
from engine.facts import SubscriberSnapshot, Transaction

# ``transfer``: not decided here; a TRANSFER webhook names the receiving customer (services/history.py).
HistoryReason = Literal["missed_periods", "chain_start", "seen_before", "older_refund", "transfer"]

# Grant policies whose access depends on each transaction, not on the latest period alone.
PER_TRANSACTION_POLICIES = frozenset({"credit", "lifetime"})
# Two periods closer than this are contiguous (a renewal starts where the last period ended;
# dates read through v1 may be rounded, and a store may charge a little after the expiry).
CONTIGUOUS_WITHIN_MS = 60 * 60 * 1000
# Reasons in the order they are reported when several hold.
_ORDER: tuple[HistoryReason, ...] = ("chain_start", "seen_before", "missed_periods", "older_refund")


@dataclass(frozen=True)
class HistoryNeed:
    """Why the history must be read, and for which store products' subscriptions."""

    reason: HistoryReason
    products: frozenset[str]
    recurring: bool  # it holds after a read too: read again on an interval


@dataclass(frozen=True)
class HistoryMark:
    """What the last history decision for a customer saw and did."""

    v1_digest: str  # the v1 snapshot it was taken on
    checked_ms: int
    reason: str | None  # None: no history was needed at that digest
    recurring: bool = False
    read_ms: int | None = None  # the last v2 history read (None: never)


def history_products(snapshot: SubscriberSnapshot, catalog: Catalog) -> frozenset[str]:
    """Subscription products v1 lists whose catalog product grants per transaction: the only
    customers a history read can matter for (no database read needed to rule the rest out)."""
    found = set()
    for product_id in snapshot.subscription_products:
        product = catalog.product_for(product_id)
        if product is not None and any(g.policy in PER_TRANSACTION_POLICIES for g in product.grants):
            found.add(product_id)
    return frozenset(found)


def history_need(
    owned: Iterable[Transaction],
    snapshot: SubscriberSnapshot,
    catalog: Catalog,
    *,
    history_read_ms: int | None = None,
) -> HistoryNeed | None:
    """Why this customer's v2 history must be read, or None when v1 and the ledger say enough.

    ``owned``: the ledger's transactions of the snapshot's customer (read after or before the
    snapshot was merged: the latest period counts either way). ``history_read_ms``: when the
    customer's history was last read (``HistoryMark.read_ms``; None: never).
    """
    products = history_products(snapshot, catalog)
    if not products:
        return None
    periods: dict[str, dict[str, tuple[int, int | None, int | None]]] = {}  # product -> id -> times
    for tx in owned:
        if tx.kind == "subscription" and tx.product_id in products and tx.purchased_ms is not None:
            periods.setdefault(tx.product_id, {})[tx.transaction_id] = (
                tx.purchased_ms,
                tx.access_end_ms,
                tx.refunded_ms,
            )
    # Since when a subscription could have come and gone unseen by v1 and by any history read.
    seen_since = snapshot.first_seen_ms
    if seen_since is not None and history_read_ms is not None:
        seen_since = max(seen_since, history_read_ms)
    reasons: dict[HistoryReason, set[str]] = {}
    for obs in snapshot.observations:
        product = obs.product_id
        if obs.kind != "subscription" or product not in products or not isinstance(obs.purchased_ms, int):
            continue
        assert isinstance(product, str)
        known = periods.get(product, {})
        latest_start = obs.purchased_ms
        earlier = [
            (start, end, refunded)
            for tx_id, (start, end, refunded) in known.items()
            if tx_id != obs.transaction_id and start < latest_start
        ]
        if earlier:
            # A refund cut its period short: where the next one began says nothing then.
            _, end, refunded = max(earlier, key=lambda times: times[0])
            if refunded is None and end is not None and latest_start > end + CONTIGUOUS_WITHIN_MS:
                reasons.setdefault("missed_periods", set()).add(product)
        else:
            began = snapshot.chain_starts.get(product)
            if began is not None and latest_start > began + CONTIGUOUS_WITHIN_MS:
                reasons.setdefault("chain_start", set()).add(product)
            elif seen_since is not None and latest_start > seen_since + CONTIGUOUS_WITHIN_MS:
                reasons.setdefault("seen_before", set()).add(product)
        for tx_id, (_, end, refunded) in known.items():
            # Refunded before its period ended (v2 shows the period cut at the refund): a
            # reversal would show as the period running to its end again.
            if (
                tx_id != obs.transaction_id
                and refunded is not None
                and (end is None or refunded <= end + CONTIGUOUS_WITHIN_MS)
            ):
                reasons.setdefault("older_refund", set()).add(product)
    if not reasons:
        return None
    reason = next(r for r in _ORDER if r in reasons)
    return HistoryNeed(reason, frozenset().union(*reasons.values()), recurring="older_refund" in reasons)


def history_check_due(mark: HistoryMark | None, v1_digest: str, now_ms: int, *, reread_ms: int) -> bool:
    """Whether the need must be decided again (from the ledger) after a v1 read: v1 answers
    something else than when it was last decided, or a recurring need's interval has passed."""
    if mark is None or mark.v1_digest != v1_digest:
        return True
    return mark.recurring and now_ms - (mark.read_ms if mark.read_ms is not None else mark.checked_ms) >= reread_ms
