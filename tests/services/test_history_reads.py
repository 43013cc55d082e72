"""History reads over HTTP against the simulator (v1 and v2 from one state): after a v1 read,
the customer's REST v2 history where access depends on more than the latest period
(services/history.py), on the event, sweep and sync paths.

* a credit subscription renewing 3 times with every webhook lost is credited 4 times, each
  period exactly once, however often and by whichever path it is read afterwards;
* a refund reversed after a renewal (its webhook lost) reaches the ledger;
* an older subscription transferred to another user (its webhook lost) ends with one owner;
* a history is not read again while v1 answers the same (simulator requests counted);
* without v2 the engine credits what v1 can see, and sends no v2 request;
* an older period refunded after it ended, stated by its webhook only, stays revoked after
  sweeps with v1 and v2.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace

import pytest
from sqlalchemy import select

from engine.catalog import DAY_MS
from engine.ports import Cause
from engine.reconcile import Reading
from persistence.models import Grant, HistoryReadMark, LedgerTransaction
from persistence.subscribers import track_customers
from services.client import sync_user
from services.inbox import process_inbox_event
from services.sweep import reconcile_customers
from services.wiring import Wiring, wiring_for
from tests.services.inbox_support import intake

WEEK = 7 * DAY_MS
PACKAGE = 30 * DAY_MS  # lessons_weekly (tests/fixtures/catalog.toml): 30 days per paid week
PRODUCT = "lessons_weekly"


@pytest.fixture
def v2_settings(settings, simulator):
    return settings.with_(revenuecat_project_id=simulator.project_id, revenuecat_v2_api_key=simulator.v2_api_key)


@pytest.fixture
def rt(v2_settings) -> Iterator[Wiring]:
    wiring = wiring_for(v2_settings)
    yield wiring
    wiring.close()


@pytest.fixture
def webhooks(v2_settings, rt):
    from web.app import create_app

    return create_app(v2_settings).test_client()


def v2_requests(simulator) -> int:
    return sum(1 for _, path, _ in simulator.state.request_log if path.startswith("/v2/"))


def lessons(rt: Wiring, customer_id: str) -> tuple[int | None, set[str]]:
    """The lessons grant of a customer: (expiry, source transactions); (None, set()) if none."""
    with rt.session_factory() as session:
        grant = session.get(Grant, (customer_id, "module:lessons"))
        return (None, set()) if grant is None else (grant.expires_ms, set(json.loads(grant.sources)))


def owners(rt: Wiring, tx_ids) -> dict[str, str | None]:
    with rt.session_factory() as session:
        rows = session.execute(
            select(LedgerTransaction.transaction_id, LedgerTransaction.owner).where(
                LedgerTransaction.transaction_id.in_(list(tx_ids))
            )
        )
        return {str(tx_id): owner for tx_id, owner in rows}


def renewing(state, user: str, start: int, renewals: int) -> list[str]:
    """A weekly lessons subscription bought at ``start`` and renewed on time; every webhook lost.
    Its transaction ids, oldest first."""
    ids = [state.purchase_subscription(user, PRODUCT, period_ms=WEEK, now_ms=start)["event"]["transaction_id"]]
    for k in range(1, renewals + 1):
        ids.append(state.renew(user, PRODUCT, now_ms=start + k * WEEK)["event"]["transaction_id"])
    return ids


def test_renewals_whose_webhooks_were_lost_are_credited_once_each_by_every_path(rt, webhooks, simulator):
    state, now = simulator.state, simulator.state.now_ms()
    start = now - 3 * WEEK - DAY_MS
    # ana: the purchase's webhook arrives, the three renewals' are lost.
    first = state.purchase_subscription("ana", PRODUCT, period_ms=WEEK, now_ms=start)
    process_inbox_event(intake(webhooks, first), rt.event_processing)
    assert lessons(rt, "ana") == (start + PACKAGE, {first["event"]["transaction_id"]})
    assert v2_requests(simulator) == 0  # a first period: v1 says all there is
    ana = [first["event"]["transaction_id"]] + [
        state.renew("ana", PRODUCT, now_ms=start + k * WEEK)["event"]["transaction_id"] for k in (1, 2, 3)
    ]
    # A later webhook (a cancellation) is the next read: v1 shows the fourth period, the ledger
    # the first; the history fills the gap on the event path.
    process_inbox_event(intake(webhooks, state.cancel("ana", PRODUCT, now_ms=now - DAY_MS)), rt.event_processing)
    assert lessons(rt, "ana") == (start + 4 * PACKAGE, set(ana))
    event_v2 = v2_requests(simulator)
    assert event_v2 == 3  # subscriptions, products (once per process), the subscription's transactions

    # ben: every webhook lost; the engine knows only his id (an operator's import): the sweep.
    ben = renewing(state, "ben", start, 3)
    track_customers(rt.session_factory, ["ben"], now_ms=now)
    result = reconcile_customers(["ben"], rt.sweep_reads)
    assert result.failed == 0 and result.changed == 1
    assert lessons(rt, "ben") == (start + 4 * PACKAGE, set(ben))
    assert v2_requests(simulator) == event_v2 + 2  # subscriptions, transactions (products known)

    # Read again, by every path and both APIs: nothing more is credited, no history re-read.
    before = v2_requests(simulator)
    for _ in range(2):
        assert reconcile_customers(["ana", "ben"], rt.sweep_reads).changed == 0
        assert sync_user(rt.client_flows, "ana").actions == ()
        assert sync_user(rt.client_flows, "ben").actions == ()
    assert v2_requests(simulator) == before
    assert lessons(rt, "ana") == (start + 4 * PACKAGE, set(ana))
    assert lessons(rt, "ben") == (start + 4 * PACKAGE, set(ben))
    assert owners(rt, ana + ben) == {**dict.fromkeys(ana, "ana"), **dict.fromkeys(ben, "ben")}
    counts = rt.read_tally.counts()
    assert counts["event"]["histories"] == 1 and counts["sweep"]["histories"] == 1
    assert "histories" not in counts["sync"]
    assert counts["sweep"]["v2"] == 2 and counts["sweep"]["customers"] == 5


def test_a_history_is_read_again_only_when_v1_shows_something_new(rt, simulator):
    state, now = simulator.state, simulator.state.now_ms()
    start = now - 3 * WEEK - DAY_MS
    renewing(state, "ana", start, 3)
    track_customers(rt.session_factory, ["ana"], now_ms=now)
    reconcile_customers(["ana"], rt.sweep_reads)
    read_once = v2_requests(simulator)
    with rt.session_factory() as session:
        mark = session.get(HistoryReadMark, "ana")
        assert (mark.reason, mark.requests, mark.read_ms is not None) == ("chain_start", read_once, True)
    for _ in range(3):  # nothing changed: v1 only
        reconcile_customers(["ana"], rt.sweep_reads)
    assert v2_requests(simulator) == read_once
    # v1 changes (a cancellation): decided again from the ledger, which holds every period.
    state.cancel("ana", PRODUCT, now_ms=now - DAY_MS)
    reconcile_customers(["ana"], rt.sweep_reads)
    assert v2_requests(simulator) == read_once
    with rt.session_factory() as session:
        mark = session.get(HistoryReadMark, "ana")
        assert mark.reason is None and mark.requests == read_once  # the last read's cost is kept


def test_a_refund_reversed_after_a_renewal_reaches_the_ledger(rt, webhooks, simulator):
    state, now = simulator.state, simulator.state.now_ms()
    start = now - WEEK - 2 * DAY_MS
    t0 = state.purchase_subscription("ana", PRODUCT, period_ms=WEEK, now_ms=start)
    process_inbox_event(intake(webhooks, t0), rt.event_processing)
    t0_id = t0["event"]["transaction_id"]
    refund = state.refund("ana", t0_id, now_ms=start + 2 * DAY_MS)
    process_inbox_event(intake(webhooks, refund), rt.event_processing)  # v1 shows it: the latest period
    assert lessons(rt, "ana") == (None, set())
    t1_id = state.renew("ana", PRODUCT, now_ms=start + WEEK)["event"]["transaction_id"]  # webhook lost
    reconcile_customers(["ana"], rt.sweep_reads)
    assert lessons(rt, "ana") == (start + WEEK + PACKAGE, {t1_id})
    state.reverse_refund("ana", t0_id, now_ms=now - DAY_MS)  # webhook lost; v1 shows t1 only
    # v1 answers the same: the refund of an older period is watched on its own interval.
    assert reconcile_customers(["ana"], rt.sweep_reads).changed == 0
    assert rt.sweep_reads.history is not None
    due = replace(rt.sweep_reads, history=replace(rt.sweep_reads.history, reread_ms=0))  # its interval passed
    result = reconcile_customers(["ana"], due)
    assert result.changed == 1 and sum(result.drift.values()) == 1
    with rt.session_factory() as session:
        assert session.get(LedgerTransaction, t0_id).refunded_ms is None
    assert lessons(rt, "ana") == (start + 2 * PACKAGE, {t0_id, t1_id})


@pytest.mark.parametrize("order", [["ben", "ana"], ["ana", "ben"]])
@pytest.mark.parametrize("newer_days_ago", [2, 8], ids=["after a lapse", "while the older ran"])
def test_an_older_subscription_transferred_to_another_user_ends_with_one_owner(
    rt, webhooks, simulator, order, newer_days_ago
):
    state, now = simulator.state, simulator.state.now_ms()
    start = now - 4 * WEEK
    older = renewing(state, "ana", start, 2)
    for k, tx_id in enumerate(older):  # every webhook of ana's first subscription arrives
        body = {"event": {**_renewal_body(state, "ana", tx_id), "id": f"evt-{k}"}, "api_version": "1.0"}
        process_inbox_event(intake(webhooks, body), rt.event_processing)
    assert lessons(rt, "ana")[1] == set(older)
    newer_at = now - newer_days_ago * DAY_MS
    newer = state.purchase_subscription("ana", PRODUCT, period_ms=WEEK, now_ms=newer_at)["event"]
    process_inbox_event(intake(webhooks, {"event": newer, "api_version": "1.0"}), rt.event_processing)
    # ben restores the older subscription's receipt: it moves with all its periods; the TRANSFER
    # webhook is lost.
    state.transfer("ana", "ben", transaction_id=older[0], now_ms=now - DAY_MS)
    track_customers(rt.session_factory, ["ben"], now_ms=now)
    for user in order:
        reconcile_customers([user], rt.sweep_reads)
    assert owners(rt, older) == dict.fromkeys(older, "ben")
    assert lessons(rt, "ben") == (start + 3 * PACKAGE, set(older))
    assert lessons(rt, "ana")[1] == {newer["transaction_id"]}
    # Read again in any order by any path: still one owner, nothing moves.
    before = v2_requests(simulator)
    reconcile_customers(["ana", "ben"], rt.sweep_reads)
    sync_user(rt.client_flows, "ana")
    assert owners(rt, older) == dict.fromkeys(older, "ben") and v2_requests(simulator) == before


def _renewal_body(state, user: str, tx_id: str) -> dict:
    """A RENEWAL/INITIAL_PURCHASE-like event naming ``user`` (the body's facts are a hint only)."""
    return {
        "type": "RENEWAL",
        "app_user_id": user,
        "original_app_user_id": user,
        "aliases": [user],
        "transaction_id": tx_id,
        "product_id": PRODUCT,
        "event_timestamp_ms": state.now_ms(),
        "store": "APP_STORE",
        "environment": "PRODUCTION",
    }


def test_a_failed_history_read_backs_the_customer_off_and_the_next_read_heals(rt, simulator):
    state, now = simulator.state, simulator.state.now_ms()
    ids = renewing(state, "ana", now - 3 * WEEK - DAY_MS, 3)
    body = rt.provider.get_subscriber("ana")
    reading = Reading.from_provider("ana", body)
    rt.convergence.reconcile(reading, Cause("sweep"))
    state.fail_next(1, status=503)  # the history's first request
    followed = rt.sweep_reads.history.after_v1(reading, Cause("sweep"))
    assert followed.status == "failed" and followed.reason == "chain_start"
    with rt.session_factory() as session:
        assert session.get(HistoryReadMark, "ana") is None  # nothing decided: read again
    assert lessons(rt, "ana")[1] == {ids[-1]}
    reconcile_customers(["ana"], rt.sweep_reads)
    assert lessons(rt, "ana")[1] == set(ids)


def test_without_v2_the_engine_credits_what_v1_can_see(settings, simulator):
    rt = wiring_for(settings)  # no project id, no v2 key
    try:
        state, now = simulator.state, simulator.state.now_ms()
        start = now - 3 * WEEK - DAY_MS
        ids = renewing(state, "ana", start, 3)
        track_customers(rt.session_factory, ["ana"], now_ms=now)
        reconcile_customers(["ana"], rt.sweep_reads)
        assert lessons(rt, "ana") == (start + 3 * WEEK + PACKAGE, {ids[-1]})  # the latest period only
        assert v2_requests(simulator) == 0
        assert rt.read_tally.counts()["sweep"] == {"customers": 1, "v1": 1}
    finally:
        rt.close()


def test_an_older_periods_refund_from_its_webhook_revokes_its_package_and_stays_revoked(
    rt, webhooks, simulator, settings
):
    state, now = simulator.state, simulator.state.now_ms()
    start = now - 2 * WEEK - 2 * DAY_MS
    ids = []
    # The provider's answers to these webhooks dated two days back: the refund below must be
    # newer than the reads that listed its period unrefunded, and a webhook's time is bounded by
    # its receipt, which SQLite stamps in whole seconds.
    state.advance_clock(-2 * DAY_MS)
    for k in range(3):  # bought, renewed twice; every webhook arrives
        body = (
            state.purchase_subscription("ana", PRODUCT, period_ms=WEEK, now_ms=start)
            if k == 0
            else state.renew("ana", PRODUCT, now_ms=start + k * WEEK)
        )
        process_inbox_event(intake(webhooks, body), rt.event_processing)
        ids.append(body["event"]["transaction_id"])
    assert lessons(rt, "ana") == (start + 3 * PACKAGE, set(ids))
    state.advance_clock(2 * DAY_MS)
    # The first period refunded after it ended: v1 lists the third period only, v2 has no
    # refund field; the webhook is the only statement of it.
    refund = state.refund("ana", ids[0])
    process_inbox_event(intake(webhooks, refund), rt.event_processing)
    revoked = (start + WEEK + 2 * PACKAGE, set(ids[1:]))  # t1 and t2, stacked from t1
    assert lessons(rt, "ana") == revoked
    with rt.session_factory() as session:
        assert session.get(LedgerTransaction, ids[0]).refunded_ms is not None
    # Read again by the sweep (v1, and the history where it decides one is needed), by v1 alone,
    # and by a full v2 history of the product: the refund stays.
    assert reconcile_customers(["ana"], rt.sweep_reads).changed == 0
    v1_only = wiring_for(settings)
    try:
        assert reconcile_customers(["ana"], v1_only.sweep_reads).changed == 0
    finally:
        v1_only.close()
    assert rt.sweep_reads.history is not None and rt.sweep_reads.history.client is not None
    read = rt.sweep_reads.history.client.read_history(
        "ana", with_aliases=False, with_purchases=False, transactions_for=[PRODUCT]
    )
    assert {t["id"] for ts in read.transactions.values() for t in ts} >= set(ids)  # t0 listed, unrefunded
    assert rt.convergence.reconcile(Reading.from_history("ana", read), Cause("sweep")).actions == ()
    assert lessons(rt, "ana") == revoked
    with rt.session_factory() as session:
        assert session.get(LedgerTransaction, ids[0]).refunded_ms is not None
