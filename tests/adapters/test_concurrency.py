"""Concurrent reconciles of one customer (webhook, sweep and client sync at once) converge once."""

import threading

from sqlalchemy import func, select

from engine.adapters.inbox import unit_of_work
from engine.adapters.models import AuditEntry, Grant
from engine.adapters.runtime import wall_clock_ms
from engine.ports import Cause
from engine.reconcile import reconcile_user


def test_parallel_reconciles_of_one_customer_grant_once(runtime, simulator):
    simulator.state.purchase_subscription("alice", "premium_monthly")
    simulator.state.purchase_non_renewing("alice", "geometry_pack_30")
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def reconcile(kind: str) -> None:
        try:
            barrier.wait()
            reconcile_user("alice", provider=runtime.provider, unit_of_work=unit_of_work(runtime.session_factory),
                           catalog=runtime.catalog, now_ms=wall_clock_ms(), cause=Cause(kind), policy=runtime.policy)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=reconcile, args=(k,)) for k in ["event", "sweep", "request"] * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with runtime.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Grant)) == 2
        assert session.scalar(select(func.count()).select_from(AuditEntry)) == 2
