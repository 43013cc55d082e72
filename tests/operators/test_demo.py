"""The demo: its truth is the simulator's whole purchase history, it passes at every size and
seed, and it never deletes data it did not make."""

from __future__ import annotations

import pytest
import redis as redis_lib
from sqlalchemy import func, select

from adapters.embedded_redis import redis_url
from demo.__main__ import demo_settings, main, run_demo
from demo.safety import DemoRefused, ensure_disposable
from demo.truth import paid_access
from engine.facts import observe_all
from engine.projection import project_access
from engine.revenuecat import parse_subscriber
from persistence.models import Subscriber
from persistence.subscribers import track_customers
from simulators.revenuecat.state import ProviderState


def one_snapshot_access(state: ProviderState, user: str, catalog, now_ms: int) -> list[tuple]:
    """What the demo used to expect: a projection of one v1 snapshot."""
    snapshot = parse_subscriber(state.subscriber(user, now_ms=now_ms)[1])
    accesses = project_access(observe_all({}, snapshot.observations), catalog, now_ms).accesses
    return [(a.resource, a.mode, a.expires_ms) for a in accesses]


def test_the_truth_sees_a_running_subscription_one_v1_snapshot_hides(runtime):
    state = ProviderState()
    state.purchase_subscription("ann", "premium_yearly")
    moved = state.purchase_subscription("bob", "premium_yearly")
    state.transfer("bob", "ann")  # ann now holds two premium_yearly subscriptions
    state.refund("ann", moved["event"]["transaction_id"])  # v1 shows this one, the latest: refunded
    now = state.now_ms()
    assert one_snapshot_access(state, "ann", runtime.catalog, now) == []
    [(resource, mode, _)] = paid_access(state, "ann", runtime.catalog, now)
    assert (resource, mode) == ("module:algebra", "full")  # her own subscription still runs


def test_the_history_is_a_copy():
    state = ProviderState()
    state.purchase_subscription("ann", "premium_monthly")
    periods, _ = state.purchase_history("ann")
    periods[0].refunded_at_ms = 1
    assert state.purchase_history("ann")[0][0].refunded_at_ms is None
    assert state.purchase_history("nobody") == ([], [])


@pytest.mark.slow
@pytest.mark.parametrize(("users", "seed"), [(8, 1), (20, 2), (40, 3), (60, 7)])
def test_the_demo_leaves_no_drift(settings, users, seed, tmp_path):
    base = demo_settings(settings.with_(instance_path=tmp_path))
    said: list[str] = []
    assert run_demo(base, users=users, seed=seed, say=said.append) == [], "\n".join(said)
    assert any("drift remaining: 0 learners" in line for line in said)


def test_the_demo_refuses_a_redis_database_that_holds_data(settings, runtime, tmp_path, capsys):
    client = redis_lib.Redis.from_url(redis_url(settings))
    client.set("someone:else", "keep me")
    environ = {"REDIS_URL": redis_url(settings), "INSTANCE_PATH": str(tmp_path)}
    assert main(["--users", "3"], environ) == 2
    assert client.get("someone:else") == b"keep me"
    err = capsys.readouterr().err
    assert "refusing to run" in err and "holds 1 keys" in err and "--force" in err


def test_the_demo_refuses_a_database_that_holds_data(settings, runtime):
    track_customers(runtime.session_factory, ["someone"], now_ms=0)
    with pytest.raises(DemoRefused, match=r"has rows in .*subscribers"):
        ensure_disposable(settings, force=False)
    with runtime.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Subscriber)) == 1
    ensure_disposable(settings, force=True)  # --force: the operator asked for it


def test_an_empty_migrated_database_and_redis_are_disposable(settings, runtime):
    ensure_disposable(settings, force=False)
