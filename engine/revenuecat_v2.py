"""RevenueCat REST API v2 bodies turned into ledger facts. Pure.

Shapes: ../shared/reference/revenuecat.md §4 (the ``Subscription``, ``SubscriptionTransaction``,
``Purchase``, ``CustomerAlias`` and ``Customer`` schemas of api-v2.yaml). One customer's history
read is several requests (``V2CustomerRead`` holds their bodies); it becomes one snapshot that
lists every period of each App Store and Play Store subscription by transaction id
(``periods="all"``), where v1 lists only the latest period of each product.

What v2 states, and what it does not (docs/provider-apis.md says it to operators):

* every period of an App Store or Play Store subscription, by store transaction id, with its
  store product, purchase time, expiry and expiry with grace; the customer holding it. Every
  paid renewal is therefore its own transaction, credited once by its id;
* for other stores (Stripe, Amazon, RevenueCat Billing...) only the subscription's latest
  period, as v1 does;
* one-time purchases whether refunded or not (``status``), without the refund's time;
* no refund of a subscription period: a transaction has no refund field. A refund shows only
  as a shorter expiry, like an expiration, so a v2 observation never asserts ``refunded_ms``
  of a subscription period (UNKNOWN), and the ledger keeps what v1 (latest period) or the
  webhooks said. What the expiry does say is that the period was not refunded before it
  (``unrefunded_until_ms``): a recorded refund earlier than the period's end as v2 now reports
  it was reversed (engine/facts.py);
* whether an earlier period was a trial or an introductory offer: only the current period's
  ``status`` says ``trialing``; earlier periods leave ``period_type`` UNKNOWN;
* the store product of a purchase or a non-App-Store/Play-Store subscription: only RevenueCat's
  product id, which ``product_store_ids`` (from ``GET /products``) names; promotional grants
  have none.

Times in v2 bodies are epoch ms. v2 answers carry no request date: ``request_ms`` is the
provider's ``Date`` header of the first answer of the read (whole seconds, so a v2 read looks
up to a second older than it is: conservative, its facts never override a newer one's).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.errors import TerminalError
from engine.facts import UNKNOWN, SubscriberSnapshot, TransactionObservation

# v2 lists the transactions of these stores' subscriptions only.
TRANSACTION_STORES = frozenset({"app_store", "mac_app_store", "play_store"})


@dataclass(frozen=True)
class V2CustomerRead:
    """The bodies of one customer's v2 history read (items of every page, in order)."""

    customer_id: str  # the customer's id as v2 names it (the listing's, or GET customer's ``id``)
    request_ms: int  # the provider's clock at the first request of the read
    subscriptions: Sequence[Mapping[str, Any]]
    purchases: Sequence[Mapping[str, Any]] | None  # None: not read (the read says nothing of them)
    # subscription id -> its transactions, for the subscriptions whose transactions were read
    transactions: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)
    aliases: Sequence[Mapping[str, Any]] | None = None  # None: not read
    product_store_ids: Mapping[str, str] = field(default_factory=dict)  # RevenueCat product id -> store id


@dataclass(frozen=True)
class CustomerHistory:
    """A parsed v2 history: the snapshot and the ids the customer is known by."""

    snapshot: SubscriberSnapshot
    identities: Mapping[str, str]  # app_user_id -> customer id (every alias, and the customer itself)


def parse_customer_history(read: V2CustomerRead) -> CustomerHistory:
    """A v2 history read as a snapshot of ledger observations; TerminalError on a body the
    spec does not allow (a missing id, a time that is not a number)."""
    try:
        return _parse(read)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise TerminalError(f"provider answered an unexpected v2 shape: {exc!r}") from None


def _parse(read: V2CustomerRead) -> CustomerHistory:
    customer_id = _text(read.customer_id)
    at = int(read.request_ms)
    observations: list[TransactionObservation] = []
    named: set[str] = set()
    latest_only: set[str] = set()
    unnamed = False
    for sub in read.subscriptions:
        store = _text(sub["store"]).lower()
        product = read.product_store_ids.get(sub["product_id"]) if sub.get("product_id") else None
        common = {
            "kind": "subscription",
            "store": store,
            "is_sandbox": _text(sub["environment"]).lower() == "sandbox",
            "ownership": "FAMILY_SHARED" if sub.get("ownership") == "family_shared" else "PURCHASED",
            "owner": customer_id,
        }
        latest_id = _text(sub["store_subscription_identifier"])
        current_type = {"trialing": "trial", "active": "normal"}.get(sub.get("status") or "", UNKNOWN)
        transactions = read.transactions.get(_text(sub["id"]))
        if transactions is None:
            # Latest period only (v1's view of it): a store without transaction history, or
            # transactions not read.
            if product is None:
                unnamed = True
            else:
                named.add(product)
                latest_only.add(product)
            observations.append(
                TransactionObservation(
                    transaction_id=latest_id,
                    observed_ms=at,
                    product_id=product if product is not None else UNKNOWN,
                    purchased_ms=_ms(sub["current_period_starts_at"]),
                    period_type=current_type,
                    # null while paused indefinitely: not "never expires"
                    expires_ms=_ms(sub["current_period_ends_at"]) if sub.get("current_period_ends_at") else UNKNOWN,
                    **common,
                )
            )
            continue
        for tx in transactions:
            tx_id = _text(tx["id"])
            tx_product = tx.get("product_store_identifier") or product
            if tx_product is None:
                unnamed = True
            else:
                named.add(_text(tx_product))
            # A null expiry is not "never expires" (that would grant a period product for good).
            expires: object = _ms(tx["expiration_date"]) if tx.get("expiration_date") is not None else UNKNOWN
            with_grace = _ms(tx["effective_expiration_date"]) if tx.get("effective_expiration_date") else None
            grace: object = UNKNOWN
            if isinstance(expires, int):
                grace = with_grace if with_grace is not None and with_grace > expires else None
            observations.append(
                TransactionObservation(
                    transaction_id=tx_id,
                    observed_ms=at,
                    product_id=_text(tx_product) if tx_product is not None else UNKNOWN,
                    purchased_ms=_ms(tx["purchased_at"]),
                    period_type=current_type if tx_id == latest_id else UNKNOWN,
                    expires_ms=expires,
                    grace_expires_ms=grace,
                    unrefunded_until_ms=expires,
                    **common,
                )
            )
    for purchase in read.purchases or ():
        tx_id = _text(purchase.get("store_purchase_identifier") or purchase["id"])
        product = read.product_store_ids.get(purchase["product_id"]) if purchase.get("product_id") else None
        refunded = purchase.get("status") == "refunded"
        observations.append(
            TransactionObservation(
                transaction_id=tx_id,
                observed_ms=at,
                product_id=product if product is not None else UNKNOWN,
                kind="non_subscription",
                store=_text(purchase["store"]).lower(),
                is_sandbox=_text(purchase["environment"]).lower() == "sandbox",
                purchased_ms=_ms(purchase["purchased_at"]),
                period_type="normal",
                ownership="FAMILY_SHARED" if purchase.get("ownership") == "family_shared" else "PURCHASED",
                expires_ms=None,
                grace_expires_ms=None,
                # v2 says "refunded" but not when: the time a webhook or the ledger holds is
                # kept. A refunded purchase leaves its customer, as v1 (which stops listing it)
                # says, so that v1 and v2 reads agree on its owner.
                refunded_ms=UNKNOWN if refunded else None,
                owner=UNKNOWN if refunded else customer_id,
                released_by=customer_id if refunded else UNKNOWN,
            )
        )
    identities = {customer_id: customer_id}
    for alias in read.aliases or ():
        identities[_text(alias["id"])] = customer_id
    by_id = {o.transaction_id: o for o in observations}  # a transaction listed twice counts once
    ordered = tuple(by_id[k] for k in sorted(by_id))
    snapshot = SubscriberSnapshot(
        customer_id=customer_id,
        request_ms=at,
        observations=ordered,
        subscription_products=frozenset(named),
        digest=_digest(ordered, named, latest_only, unnamed, read.purchases is not None),
        periods="all",
        latest_only_products=frozenset(latest_only),
        unnamed_subscriptions=unnamed,
        lists_purchases=read.purchases is not None,
    )
    return CustomerHistory(snapshot, identities)


def _text(value: Any) -> str:
    if not isinstance(value, (str, int)) or isinstance(value, bool) or value == "":
        raise ValueError(f"expected an id, got {value!r}")
    return str(value)


def _ms(value: Any) -> int:
    """v2 times are integers (ms since epoch); anything else is a shape error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"not a time in ms: {value!r}")
    return int(value)


def _digest(observations: Sequence[TransactionObservation], *sets: object) -> str:
    """The purchase state the snapshot asserts (no read time): equal when nothing changed."""
    facts = [{k: repr(v) for k, v in vars(o).items() if k != "observed_ms" and v is not UNKNOWN} for o in observations]
    shape = [sorted(s) if isinstance(s, set) else s for s in sets]
    return hashlib.sha256(json.dumps([facts, shape], sort_keys=True).encode()).hexdigest()
