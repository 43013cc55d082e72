"""What the demo's learners do at the store, and the lossy network their webhooks cross."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from simulators.revenuecat.state import ProviderState, SimulatorError


def sell(state: ProviderState, users: list[str], rng: random.Random) -> dict[str, str]:
    """Day one: every learner buys something. Returns what each bought."""
    bought: dict[str, str] = {}
    for user in users:
        roll = rng.random()
        if roll < 0.45:
            bought[user] = rng.choice(["premium_monthly", "premium_yearly"])
            state.purchase_subscription(user, bought[user])
        elif roll < 0.75:
            bought[user] = "h01enb"
            state.purchase_non_renewing(user, "h01enb")
        else:
            bought[user] = "geometry_pack_30"
            for _ in range(rng.randint(1, 2)):
                state.purchase_non_renewing(user, "geometry_pack_30")
    return bought


def aftermath(state: ProviderState, users: list[str], bought: dict[str, str], rng: random.Random) -> int:
    """The weeks after: renewals, cancellations, expirations, refunds, reversals, restores.

    Returns how many restores (transfers) were left out because v1, which the demo runs on,
    could not show their result: v1 lists one period per subscription product, so a second
    subscription to a product the restoring learner already holds, or the earlier periods of a
    renewed subscription that moves (which credit days of their own), are invisible to a v1
    read of the learner. REST v2's full history is what sees them.
    """
    skipped = 0
    for user in users:
        product = bought[user]
        try:
            info = state.subscriber(user)[1]["subscriber"]
            if product in info["subscriptions"]:
                roll = rng.random()
                if roll < 0.35:
                    state.renew(user, product)
                elif roll < 0.5:
                    state.cancel(user, product)
                    state.expire(user, product)
                elif roll < 0.6:
                    state.refund(user, info["subscriptions"][product]["store_transaction_id"])
            elif product in info["non_subscriptions"]:
                tx = info["non_subscriptions"][product][0]["store_transaction_id"]
                roll = rng.random()
                if roll < 0.15:
                    state.refund(user, tx)
                    if rng.random() < 0.3:
                        state.reverse_refund(user, tx)
                elif roll < 0.4 and product == "geometry_pack_30":
                    state.purchase_non_renewing(user, product)  # a top-up
            if rng.random() < 0.06:
                target = rng.choice(users)  # restored on another account
                if _visible_to_v1_after_transfer(state, user, target):
                    state.transfer(user, target)
                else:
                    skipped += 1
        except SimulatorError:
            pass  # e.g. a transfer to the same customer: not something a store would do
    return skipped


def _visible_to_v1_after_transfer(state: ProviderState, source: str, target: str) -> bool:
    """Whether a v1 read of ``target`` would show every period ``source`` hands over."""
    moving, _ = state.purchase_history(source)
    held, _ = state.purchase_history(target)
    products = [p.product_id for p in moving]
    renewed = len(products) != len(set(products))
    return not renewed and not set(products) & {p.product_id for p in held}


@dataclass
class LossyNetwork:
    """Between the provider and the engine: drops, duplicates, and delays webhooks to the end."""

    deliver: Callable[[dict[str, Any]], int]
    rng: random.Random
    lose: float
    duplicate: float
    reorder: float
    sent: list[dict[str, Any]] = field(default_factory=list)
    late: list[dict[str, Any]] = field(default_factory=list)
    fate: Counter[str] = field(default_factory=Counter)

    def __call__(self, body: dict[str, Any]) -> None:
        self.sent.append(body)
        if self.rng.random() < self.lose:
            self.fate["lost"] += 1
            return
        copies = 2 if self.rng.random() < self.duplicate else 1
        self.fate["duplicated"] += copies - 1
        if self.rng.random() < self.reorder:
            self.fate["delayed"] += 1
            self.late.extend([body] * copies)
            return
        for _ in range(copies):
            self.fate[f"HTTP {self.deliver(body)}"] += 1

    def deliver_late(self) -> None:
        """The delayed webhooks, shuffled, now."""
        self.rng.shuffle(self.late)
        for body in self.late:
            self.fate[f"HTTP {self.deliver(body)}"] += 1
        self.late = []
