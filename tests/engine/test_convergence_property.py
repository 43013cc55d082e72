"""The property the engine exists for (design.md, "Convergent by construction").

For generated histories of purchases, renewals, cancellations, expirations, refunds, refund
reversals and transfers among several users, delivered with any subset of webhooks lost,
duplicated, delayed and permuted, processed by the real pipeline (intake -> inbox ->
process_inbox_event -> provider simulator over HTTP -> SQL ledger), followed by one reconcile
per user: granted access equals the projection of the provider's final state, and every
credited transaction is credited exactly once.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import delete, select

from engine.catalog import DAY_MS
from engine.errors import TransientError
from engine.facts import observe_all
from engine.ports import Cause
from engine.projection import project_access
from engine.provider_values import parse_instant_ms
from engine.revenuecat import parse_subscriber
from persistence.ledger_store import grant_to_access
from persistence.models import Base, Grant
from services.inbox import EventProcessing, process_inbox_event
from simulators.revenuecat.server import SimulatorServer
from simulators.revenuecat.state import ProviderState, SimulatorError
from tests.conftest import SIM_KEY, WEBHOOK_AUTH
from tests.support import reconcile_now

USERS = ["ana", "ben", "$RCAnonymousID:c0ffee"]
SUBSCRIPTIONS = ["premium_monthly", "premium_yearly"]


@dataclass(frozen=True)
class Op:
    kind: str
    user: int
    other: int
    product: int
    pick: int
    advance_days: int


ops = st.builds(
    Op,
    kind=st.sampled_from(
        [
            "buy_sub",
            "buy_sub",
            "renew",
            "renew",
            "cancel",
            "expire",
            "buy_pack",
            "buy_pack",
            "buy_course",
            "refund",
            "refund",
            "reverse_refund",
            "transfer",
        ]
    ),
    user=st.integers(0, len(USERS) - 1),
    other=st.integers(0, len(USERS) - 1),
    product=st.integers(0, len(SUBSCRIPTIONS) - 1),
    pick=st.integers(0, 20),
    advance_days=st.sampled_from([0, 0, 1, 5, 20, 40]),
)


@dataclass(frozen=True)
class Delivery:
    lost: bool
    copies: int
    delay: int


deliveries = st.builds(Delivery, lost=st.booleans(), copies=st.integers(1, 3), delay=st.integers(0, 6))


class FrozenClockState(ProviderState):
    """The simulator on a clock that moves only when the history says so (replayable examples)."""

    START_MS = 1_800_000_000_000

    def now_ms(self) -> int:
        return self.START_MS + self.clock_offset_ms


def apply_op(state, op: Op) -> dict | None:
    """Run one operation on the simulator; None when it makes no sense in the current state."""
    try:
        return _apply_op(state, op)
    except SimulatorError:
        return None


def _apply_op(state, op: Op) -> dict | None:
    user, product = USERS[op.user], SUBSCRIPTIONS[op.product]
    if op.advance_days:
        state.advance_clock(op.advance_days * DAY_MS)
    body = state.subscriber(user)[1]["subscriber"]
    subs = body["subscriptions"]
    one_time = [p["store_transaction_id"] for items in body["non_subscriptions"].values() for p in items]
    if op.kind == "buy_sub":
        return state.purchase_subscription(user, product)
    if op.kind == "buy_pack":
        return state.purchase_non_renewing(user, "geometry_pack_30")
    if op.kind == "buy_course":
        return state.purchase_non_renewing(user, "h01enb")
    if product not in subs:
        if op.kind == "refund" and one_time:
            return state.refund(user, one_time[op.pick % len(one_time)])
        if op.kind == "transfer" and op.other != op.user and (subs or one_time):
            return state.transfer(user, USERS[op.other])
        return None
    latest = subs[product]
    if op.kind == "renew":
        # Renewals happen at the end of the period: move the clock there first.
        expires = _ms(latest["expires_date"])
        if expires > state.now_ms():
            state.advance_clock(expires - state.now_ms())
        return state.renew(user, product)
    if op.kind == "cancel":
        return state.cancel(user, product)
    if op.kind == "expire":
        return state.expire(user, product)
    if op.kind == "refund":
        return state.refund(user, latest["store_transaction_id"])
    if op.kind == "reverse_refund" and latest.get("refunded_at"):
        return state.reverse_refund(user, latest["store_transaction_id"])
    if op.kind == "transfer" and op.other != op.user:
        return state.transfer(user, USERS[op.other])
    return None


def _ms(iso: str) -> int:
    ms = parse_instant_ms(iso)
    assert ms is not None, iso
    return ms


def wipe(runtime) -> None:
    with runtime.db.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(delete(table))


@hsettings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    history=st.lists(st.tuples(ops, deliveries), min_size=1, max_size=14), order_seed=st.randoms(use_true_random=False)
)
def test_granted_access_converges_to_the_providers_final_state(client, runtime, base_settings, history, order_seed):
    wipe(runtime)
    with SimulatorServer(FrozenClockState(), api_key=SIM_KEY, webhook_auth=WEBHOOK_AUTH) as sim:
        state = sim.state
        ctx = EventProcessing(
            session_factory=runtime.session_factory,
            convergence=replace(runtime.convergence, clock_ms=state.now_ms),
            provider=runtime.provider.__class__(sim.url, SIM_KEY),
            max_attempts=9,
            retry_cap_ms=600_000,
        )
        pending: list[tuple[int, dict]] = []  # (due step, body)

        def deliver_due(step: int) -> None:
            due = [b for s, b in pending if s <= step]
            pending[:] = [(s, b) for s, b in pending if s > step]
            order_seed.shuffle(due)  # permuted (and delayed ones interleave with later steps)
            for body in due:
                response = client.post("/webhooks/revenuecat", json=body, headers={"Authorization": WEBHOOK_AUTH})
                assert response.status_code == 200
                if response.json["inbox_id"] is not None:
                    with contextlib.suppress(TransientError):
                        process_inbox_event(response.json["inbox_id"], ctx)

        for step, (op, delivery) in enumerate(history):
            body = apply_op(state, op)
            if body is not None and not delivery.lost:
                pending.extend((step + delivery.delay, body) for _ in range(delivery.copies))
            deliver_due(step)
        deliver_due(len(history) + 100)

        # One sweep: one reconcile per user, with the provider's final state.
        now_ms = state.now_ms()
        for user in USERS:
            reconcile_now(runtime, user, cause=Cause("sweep"), provider=ctx.provider, now_ms=now_ms)

        for user in USERS:
            final = state.subscriber(user, now_ms=now_ms)[1]
            snapshot = parse_subscriber(final)
            expected = project_access(observe_all({}, snapshot.observations), runtime.catalog, now_ms).accesses
            with runtime.session_factory() as session:
                granted = [
                    grant_to_access(g)
                    for g in session.scalars(
                        select(Grant).where(Grant.customer_id == snapshot.customer_id).order_by(Grant.resource)
                    )
                ]
            assert [(a.resource, a.mode, a.expires_ms) for a in granted] == [
                (a.resource, a.mode, a.expires_ms) for a in expected
            ], (user, history)
            # Credited exactly once: the geometry credit equals 30 days per paid pack, stacked.
            packs = sorted(
                _ms(p["purchase_date"]) for p in final["subscriber"]["non_subscriptions"].get("geometry_pack_30", [])
            )
            end = None
            for purchased in packs:
                end = max(purchased, end or 0) + 30 * DAY_MS
            credit = {a.resource: a.expires_ms for a in granted}.get("module:geometry")
            assert credit == (end if end is not None and end > now_ms else None), (user, history)
