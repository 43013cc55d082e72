"""v1 and v2 snapshots merged in any order converge to the same ledger (engine.facts).

A generated provider history (purchases, renewals, one-time purchases, refunds and their
reversals, also after a renewal, transfers of whole subscriptions, older ones included, and of
purchases between customers) is read at
distinct times through v1 bodies (the latest period of each product) and v2 history reads
(every period by id), both through the real parsers. The reads are then merged in a random
interleaving that keeps each customer's reads in their order (the reconcile skips a snapshot
older than one it already merged); every interleaving must give the same facts. After a final
v2 read of every customer, owners and expiries equal the provider's, and a refund reversed after
its period was renewed is no longer in the ledger when the refund had cut the period short (v2
shows it running to its end again; a refund made after the period ended changes nothing v2 shows).
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from engine.facts import PURCHASE_FIELDS, STATE_FIELDS, SubscriberSnapshot, Transaction, observe_snapshot
from engine.revenuecat import parse_subscriber
from engine.revenuecat_v2 import V2CustomerRead, parse_customer_history

CUSTOMERS = ["ana", "ben", "$RCAnonymousID:c1"]
SUBSCRIPTIONS = ["monthly", "yearly"]
ONE_TIME = ["course", "pack"]
DAY = 86_400_000


@dataclass
class Tx:
    id: str
    product: str
    chain: str | None  # None: a one-time purchase
    owner: str
    purchased: int
    expires: int | None = None
    refunded_at: int | None = None
    cut_short: bool = False  # its last refund came before its period ended (v2 shows the cut)

    def expiry(self) -> int | None:
        if self.expires is None or self.refunded_at is None:
            return self.expires
        return min(self.expires, self.refunded_at)


class World:
    def __init__(self) -> None:
        self.txs: list[Tx] = []
        self.now = 1_700_000_000_000

    def chains(self, owner: str) -> dict[str, list[Tx]]:
        chains: dict[str, list[Tx]] = {}
        for tx in self.txs:
            if tx.chain is not None and tx.owner == owner:
                chains.setdefault(tx.chain, []).append(tx)
        return chains

    def apply(self, kind: str, who: str, pick: int, other: str) -> None:
        self.now += 3 * DAY
        chains = [c for c in {t.chain for t in self.txs if t.chain and t.owner == who} if c]
        mine = [t for t in self.txs if t.owner == who]
        if kind == "buy_sub":
            tx_id = f"s{len(self.txs)}"
            product = SUBSCRIPTIONS[pick % 2]
            self.txs.append(Tx(tx_id, product, tx_id, who, self.now, self.now + 30 * DAY))
        elif kind == "renew" and chains:
            chain = sorted(chains)[pick % len(chains)]
            last = max((t for t in self.txs if t.chain == chain), key=lambda t: t.purchased)
            start = max(self.now, last.expires or self.now)
            self.txs.append(Tx(f"s{len(self.txs)}", last.product, chain, who, start, start + 30 * DAY))
        elif kind == "buy_one":
            self.txs.append(Tx(f"p{len(self.txs)}", ONE_TIME[pick % 2], None, who, self.now))
        elif kind == "refund" and mine:
            # One-time purchases, or the latest period of a subscription (what v1 can show).
            latest = {t.chain: t for t in sorted(mine, key=lambda t: t.purchased) if t.chain}
            candidates = [t for t in mine if t.chain is None] + list(latest.values())
            tx = candidates[pick % len(candidates)]
            tx.refunded_at = self.now
            tx.cut_short = tx.expires is not None and self.now < tx.expires
        elif kind == "reverse" and any(t.refunded_at is not None for t in mine):
            # Any refunded transaction, a period since renewed included.
            refunded = [t for t in mine if t.refunded_at is not None]
            refunded[pick % len(refunded)].refunded_at = None
        elif kind == "transfer" and mine and other != who:
            tx = mine[pick % len(mine)]
            for moved in [t for t in self.txs if (t.chain is not None and t.chain == tx.chain) or t is tx]:
                moved.owner = other

    def v1(self, who: str) -> SubscriberSnapshot:
        latest: dict[str, Tx] = {}
        for tx in sorted(self.txs, key=lambda t: t.purchased):
            if tx.chain is not None and tx.owner == who:
                latest[tx.product] = tx
        subscriptions = {
            product: {
                "purchase_date": tx.purchased,
                "expires_date": tx.expiry(),
                "refunded_at": tx.refunded_at,
                "store_transaction_id": tx.id,
                "store": "app_store",
                "is_sandbox": False,
                "period_type": "normal",
                "ownership_type": "PURCHASED",
            }
            for product, tx in latest.items()
        }
        non_subscriptions: dict[str, list[dict]] = {}
        for tx in self.txs:
            if tx.chain is None and tx.owner == who and tx.refunded_at is None:
                non_subscriptions.setdefault(tx.product, []).append(
                    {"id": tx.id, "store_transaction_id": tx.id, "purchase_date": tx.purchased, "store": "app_store"}
                )
        body = {
            "request_date_ms": self.now,
            "subscriber": {
                "original_app_user_id": who,
                "subscriptions": subscriptions,
                "non_subscriptions": non_subscriptions,
            },
        }
        return parse_subscriber(body)

    def v2(self, who: str) -> SubscriberSnapshot:
        subscriptions, transactions = [], {}
        for chain, txs in sorted(self.chains(who).items()):
            txs.sort(key=lambda t: t.purchased)
            subscriptions.append(
                {
                    "object": "subscription",
                    "id": f"sub_{chain}",
                    "product_id": f"prod_{txs[-1].product}",
                    "store": "app_store",
                    "environment": "production",
                    "ownership": "purchased",
                    "status": "active",
                    "store_subscription_identifier": txs[-1].id,
                    "current_period_starts_at": txs[-1].purchased,
                    "current_period_ends_at": txs[-1].expiry(),
                }
            )
            transactions[f"sub_{chain}"] = [
                {
                    "id": t.id,
                    "purchased_at": t.purchased,
                    "product_store_identifier": t.product,
                    "expiration_date": t.expiry(),
                    "effective_expiration_date": t.expiry(),
                }
                for t in txs
            ]
        purchases = [
            {
                "id": f"rc_{t.id}",
                "store_purchase_identifier": t.id,
                "product_id": f"prod_{t.product}",
                "purchased_at": t.purchased,
                "status": "refunded" if t.refunded_at is not None else "owned",
                "store": "app_store",
                "environment": "production",
            }
            for t in self.txs
            if t.chain is None and t.owner == who
        ]
        products = {f"prod_{p}": p for p in SUBSCRIPTIONS + ONE_TIME}
        read = V2CustomerRead(who, self.now, subscriptions, purchases, transactions, None, products)
        return parse_customer_history(read).snapshot


def merge(snapshots: list[SubscriberSnapshot]) -> dict[str, Transaction]:
    """What the reconcile does with each snapshot: the customer's and the named transactions
    in, the changed ones out; a snapshot older than the customer's last is skipped."""
    ledger: dict[str, Transaction] = {}
    last: dict[str, int] = {}
    for snap in snapshots:
        if snap.request_ms < last.get(snap.customer_id, -1):
            continue
        last[snap.customer_id] = snap.request_ms
        named = {o.transaction_id for o in snap.observations}
        known = {k: t for k, t in ledger.items() if t.owner == snap.customer_id or k in named}
        for tx in observe_snapshot(known, snap):
            ledger[tx.transaction_id] = tx
    return ledger


def facts(ledger: dict[str, Transaction]) -> dict[str, tuple]:
    return {k: tuple(getattr(t, f) for f in PURCHASE_FIELDS + STATE_FIELDS) for k, t in ledger.items()}


step = st.tuples(
    st.sampled_from(
        ["buy_sub", "renew", "renew", "buy_one", "refund", "reverse", "reverse", "transfer"] + ["read"] * 5
    ),
    st.integers(0, len(CUSTOMERS) - 1),
    st.integers(0, 50),
    st.integers(0, len(CUSTOMERS) - 1),
    st.booleans(),
)


# ana's period is refunded while it runs (v1 sees it), renewed, and the refund reversed: only the
# final history shows the period running to its end again.
REVERSED_AFTER_RENEWAL = [
    ("buy_sub", 0, 0, 0, False),
    ("refund", 0, 0, 0, False),
    ("read", 0, 0, 0, False),
    ("renew", 0, 0, 0, False),
    ("read", 0, 0, 0, False),
    ("reverse", 0, 0, 0, False),
]

# A purchase moves from ana to ben; ana's newer snapshot (without it) is merged before ben's.
TRANSFER_READ_LATE = [
    ("buy_one", 0, 0, 1, False),
    ("read", 0, 0, 0, False),
    ("transfer", 0, 0, 1, False),
    ("read", 1, 0, 0, True),
    ("read", 0, 0, 0, False),
]


@hsettings(max_examples=400, deadline=None)
@given(steps=st.lists(step, max_size=40), picks=st.lists(st.integers(0, len(CUSTOMERS) - 1), max_size=200))
@example(steps=TRANSFER_READ_LATE, picks=[0, 0, 1])
@example(steps=REVERSED_AFTER_RENEWAL, picks=[])
def test_v1_and_v2_reads_in_any_interleaving_converge_to_the_same_facts(steps, picks):
    world = World()
    reads: list[SubscriberSnapshot] = []
    for kind, who, pick, other, through_v2 in steps:
        if kind == "read":
            world.now += 1
            reads.append(world.v2(CUSTOMERS[who]) if through_v2 else world.v1(CUSTOMERS[who]))
        else:
            world.apply(kind, CUSTOMERS[who], pick, CUSTOMERS[other])
    # Any interleaving of the reads so far, then the same with a last v2 read of everyone.
    assert facts(merge(interleave(reads, picks))) == facts(merge(reads))
    for who in CUSTOMERS:  # the sweep's last pass reads everyone's history
        world.now += 1
        reads.append(world.v2(who))
    in_order = merge(reads)
    assert facts(merge(interleave(reads, picks))) == facts(in_order)
    # And they are the provider's: every transaction's owner and expiry.
    for tx in world.txs:
        merged = in_order[tx.id]
        owner = None if tx.chain is None and tx.refunded_at is not None else tx.owner
        assert (merged.owner, merged.purchased_ms, merged.product_id) == (owner, tx.purchased, tx.product), tx
        if tx.chain is not None:
            assert merged.expires_ms == tx.expiry()
            if tx.refunded_at is None and tx.cut_short:
                assert merged.refunded_ms is None, tx  # reversed, whenever the ledger saw the refund
            elif tx.refunded_at is not None:
                assert merged.refunded_ms in (None, tx.refunded_at), tx  # None: no read saw it


def interleave(reads: list[SubscriberSnapshot], picks: list[int]) -> list[SubscriberSnapshot]:
    """The reads in another order: customers' queues merged as ``picks`` says, each in its order."""
    queues = {c: [s for s in reads if s.customer_id == c] for c in CUSTOMERS}
    shuffled: list[SubscriberSnapshot] = []
    for pick in picks + list(range(len(reads))):
        queue = queues[CUSTOMERS[pick % len(CUSTOMERS)]] or next((q for q in queues.values() if q), [])
        if queue:
            shuffled.append(queue.pop(0))
    assert len(shuffled) == len(reads)
    return shuffled
