"""Discovery over HTTP against the simulator's REST API v2: a pass over several pages finds and
heals the customers whose every webhook was lost (drift of its own kind, counted, reported and
audited), a new run resumes from the stored cursor, a refused list read keeps the cursor, and the
pass spends only its share of the budget."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from sqlalchemy import select

from adapters.rate_budget import RateBudget
from demo.truth import granted_access, paid_access
from persistence.discovery import claim_pass
from persistence.models import AuditEntry, DiscoveryPass, Identity, Subscriber
from services.discovery import DiscoveryReads, run_discovery
from services.wiring import Wiring, wiring_for
from tests.adapters.pacing import START_MS, FakeClock
from tests.tasks.sweep_support import known_customer

LOST = ["lost-course", "lost-sub", "lost-pack", "lost-both"]


def small_pages(rt: Wiring, **changes) -> DiscoveryReads:
    """The runtime's discovery with pages of two customers (every list paginates)."""
    assert rt.discovery is not None
    return replace(rt.discovery, **{"page_size": 2, "run_s": 120.0, **changes})


def lose_everything(simulator) -> None:
    """Customers who bought while the engine heard nothing: no webhook of theirs ever arrived."""
    state = simulator.state
    state.purchase_non_renewing("lost-course", "h01enb")
    state.purchase_subscription("lost-sub", "premium_monthly", store="app_store")
    state.purchase_non_renewing("lost-pack", "geometry_pack_30")
    state.purchase_non_renewing("lost-both", "h01enb")
    state.purchase_subscription("lost-both", "premium_monthly", store="play_store")


def list_requests(simulator) -> int:
    return sum(1 for _, path, _ in simulator.state.request_log if path.endswith("/customers"))


def history_reads_of(simulator, customer_id: str) -> int:
    return sum(1 for _, path, _ in simulator.state.request_log if f"/customers/{customer_id}/" in path)


def the_pass(rt: Wiring) -> DiscoveryPass:
    with rt.session_factory() as session:
        return session.scalars(select(DiscoveryPass).order_by(DiscoveryPass.id.desc()).limit(1)).one()


def test_a_pass_over_several_pages_heals_the_customers_whose_every_webhook_was_lost(
    client, runtime, simulator, v2_runtime, sentry_events
):
    known_customer(client, runtime, simulator, "alice", "h01enb")
    known_customer(client, runtime, simulator, "bob")
    lose_everything(simulator)
    simulator.state.subscriber("window-shopper")  # a customer with no purchase
    listed = 2 + len(LOST) + 1

    run = run_discovery(small_pages(v2_runtime))

    assert run.finished and run.stopped is None
    assert (run.pages, run.customers, run.new, run.repaired, run.failed) == (math.ceil(listed / 2), listed, 5, 4, 0)
    now = simulator.state.now_ms()
    for user in LOST:
        assert granted_access(v2_runtime, user) == paid_access(simulator.state, user, v2_runtime.catalog, now) != []
    # Known customers are left to the sweep: their history is not read.
    assert history_reads_of(simulator, "alice") == history_reads_of(simulator, "bob") == 0
    assert list_requests(simulator) == run.pages
    # The customer with nothing to grant is known from now on, so the sweep polls it.
    with v2_runtime.session_factory() as session:
        assert session.get(Subscriber, "window-shopper") is not None
        assert session.get(Identity, "window-shopper") is not None
        audit = session.execute(
            select(AuditEntry.customer_id, AuditEntry.drift_kind, AuditEntry.cause_kind).where(
                AuditEntry.cause_kind == "discovery"
            )
        ).all()
    assert {c for c, _, _ in audit} == set(LOST) and {k for _, k, _ in audit} == {"undiscovered_customer"}
    assert run.drift == {"undiscovered_customer": len(audit)} == {"undiscovered_customer": 5}
    # Counted, reported (one Sentry event for the kind), recorded on the pass.
    counters = v2_runtime.metrics.counters()
    assert counters['engine_drift_repaired_total{kind="undiscovered_customer"}'] == 5
    assert counters['engine_reconciles_total{cause="discovery"}'] == 5
    assert counters['engine_discovery_customers_total{outcome="new"}'] == 5
    assert counters['engine_discovery_customers_total{outcome="known"}'] == 2
    assert counters["engine_discovery_pages_total"] == run.pages
    [event] = [e for e in sentry_events.items("event") if e["tags"].get("drift_kind") == "undiscovered_customer"]
    assert event["contexts"]["drift"]["customers"] == 4 and event["tags"]["cause"] == "discovery"
    done = the_pass(v2_runtime)
    assert (done.open, done.cursor, done.pages, done.customers, done.new_customers, done.repaired) == (
        None,
        None,
        run.pages,
        listed,
        5,
        4,
    )
    assert done.finished_ms is not None and done.leased_until_ms is None


def test_a_new_run_resumes_the_pass_from_its_stored_cursor(simulator, v2_runtime, v2_settings):
    for k in range(9):
        simulator.state.purchase_non_renewing(f"lost-{k}", "h01enb")
    # The first run's time box runs out once the second page is listed, before its customers.
    stop_after_two_pages = small_pages(v2_runtime, monotonic=lambda: 0.0 if list_requests(simulator) < 2 else 1e9)
    first = run_discovery(stop_after_two_pages)
    assert (first.pages, first.new, first.finished) == (1, 2, False)
    stored = the_pass(v2_runtime)
    assert (stored.open, stored.cursor, stored.pages, stored.new_customers) == (True, "lost-1", 1, 2)
    assert stored.leased_until_ms is None  # given back: the next run may take it at once

    # Another process (as after a restart) carries on from the stored cursor.
    other = wiring_for(v2_settings.with_(instance_path=v2_settings.instance_path / "restarted"))
    try:
        second = run_discovery(small_pages(other))
    finally:
        other.close()
    assert second.finished and second.pass_id == first.pass_id
    assert (second.pages, second.new) == (4, 7)  # the page in flight again, then the rest
    assert list_requests(simulator) == 5 + 1  # five pages; only the one in flight was listed twice
    for k in range(9):
        assert history_reads_of(simulator, f"lost-{k}") > 0
        assert granted_access(v2_runtime, f"lost-{k}") == [("course:H01ENB", "paid", None)]
    assert sum(history_reads_of(simulator, f"lost-{k}") for k in range(9)) == 9 * history_reads_of(simulator, "lost-0")
    done = the_pass(v2_runtime)
    assert (done.pages, done.customers, done.new_customers) == (5, 9, 9)


@pytest.mark.parametrize("status", [429, 423, 500, 503])
def test_a_refused_list_read_defers_the_pass_and_keeps_its_cursor(simulator, v2_runtime, status):
    for k in range(5):
        simulator.state.purchase_non_renewing(f"lost-{k}", "h01enb")
    first = run_discovery(small_pages(v2_runtime, monotonic=lambda: 0.0 if list_requests(simulator) < 2 else 1e9))
    assert first.pages == 1
    simulator.state.fail_next(1, status, retry_after_s=0.2)

    refused = run_discovery(small_pages(v2_runtime))
    assert not refused.finished and refused.pages == 0 and str(status) in (refused.stopped or "")
    stored = the_pass(v2_runtime)
    assert (stored.open, stored.cursor, stored.pages) == (True, "lost-1", 1)
    assert str(status) in (stored.last_error or "") and stored.leased_until_ms is None

    resumed = run_discovery(small_pages(v2_runtime))
    assert resumed.finished and resumed.pages == 2
    assert list_requests(simulator) == 3 + 1 + 1  # three pages, the one in flight, the refused one
    assert all(granted_access(v2_runtime, f"lost-{k}") for k in range(5))


def test_a_failed_history_read_stops_the_run_and_the_customer_is_read_again(simulator, v2_runtime):
    simulator.state.purchase_non_renewing("lost-a", "h01enb")
    simulator.state.purchase_non_renewing("lost-b", "h01enb")
    stopped = run_discovery(small_pages(v2_runtime, monotonic=lambda: 0.0 if list_requests(simulator) < 1 else 1e9))
    assert stopped.pages == 0  # time box: the page is still in flight
    simulator.state.fail_next(1, 503)  # the first history read of the next run
    failed = run_discovery(small_pages(v2_runtime))
    assert failed.new == 0 and "503" in (failed.stopped or "") and granted_access(v2_runtime, "lost-a") == []
    healed = run_discovery(small_pages(v2_runtime))
    assert healed.finished and healed.new == 2
    assert granted_access(v2_runtime, "lost-a") == granted_access(v2_runtime, "lost-b") != []


class FakeTimePacer:
    """The budget's own decision on a fake clock, with the sweep asking for every slot it may
    have: discovery is granted a slot only when its lane (or an idle budget) allows, and the
    clock moves to the next instant either may be served."""

    def __init__(self, budget: RateBudget, clock: FakeClock):
        self.budget, self.clock = budget, clock
        self.grants: dict[str, int] = {"discovery": 0, "sweep": 0}

    def before_request(self) -> None:
        while True:
            sweep_wait = self.budget.try_take("sweep")
            if sweep_wait == 0:
                self.grants["sweep"] += 1
                continue
            discovery_wait = self.budget.try_take("discovery")
            if discovery_wait == 0:
                self.grants["discovery"] += 1
                return
            self.clock.now_ms += max(1, math.ceil(min(sweep_wait, discovery_wait) * 1000))

    def after_response(self, usage: int | None, limit: int | None) -> None:
        return None  # the simulator's headers count wall-clock minutes, not the fake clock's

    def throttled(self, retry_after_s: float | None) -> None:
        raise AssertionError("the provider never refused a paced request here")


def test_a_pass_spends_only_its_share_of_a_budget_the_sweep_wants_all_of(simulator, v2_runtime, v2_settings):
    for k in range(12):
        simulator.state.purchase_non_renewing(f"lost-{k}", "h01enb")
    clock = FakeClock()
    budget = RateBudget(v2_runtime.redis, 480, name="discovery-share", discovery_share=0.1, clock=clock)
    pacer = FakeTimePacer(budget, clock)
    assert v2_runtime.provider_v2 is not None
    reads = small_pages(v2_runtime, client=v2_runtime.provider_v2.paced(pacer))
    before = simulator.state.request_count

    run = run_discovery(reads)

    assert run.finished and run.new == 12
    sent = simulator.state.request_count - before
    assert pacer.grants["discovery"] == sent  # one slot at discovery priority per request, no more
    minutes = (clock.now_ms - START_MS) / 60_000
    share = 0.1 * budget.limit_for("discovery")
    assert sent <= share * minutes + budget.burst  # its lane, not the sweep's
    assert sent >= 0.9 * share * minutes  # and the lane is its own however hard the sweep asks
    assert pacer.grants["sweep"] + sent <= budget.limit_for("sweep") * minutes + budget.burst


def test_a_finished_pass_starts_the_next_after_the_interval(simulator, v2_runtime):
    simulator.state.purchase_non_renewing("lost-a", "h01enb")
    clock = {"ms": START_MS}
    convergence = replace(v2_runtime.convergence, clock_ms=lambda: clock["ms"])
    reads = small_pages(v2_runtime, convergence=convergence, interval_s=3600)
    assert run_discovery(reads).finished
    clock["ms"] += 3599_000
    assert run_discovery(reads).pass_id is None  # not due yet
    clock["ms"] += 1000
    second = run_discovery(reads)
    assert second.finished and second.new == 0 and second.customers == 1  # known now: only listed


def test_a_pass_another_run_holds_is_left_alone_until_its_lease_runs_out(simulator, v2_runtime):
    simulator.state.purchase_non_renewing("lost-a", "h01enb")
    factory = v2_runtime.session_factory
    held = claim_pass(factory, now_ms=START_MS, lease_ms=60_000, next_start_ms=lambda s, f: f)
    assert held is not None  # a run that died holding it
    clock = {"ms": START_MS + 59_999}
    reads = small_pages(v2_runtime, convergence=replace(v2_runtime.convergence, clock_ms=lambda: clock["ms"]))
    assert run_discovery(reads).pass_id is None and list_requests(simulator) == 0
    clock["ms"] += 1
    taken = run_discovery(reads)
    assert taken.pass_id == held.id and taken.finished and taken.new == 1
