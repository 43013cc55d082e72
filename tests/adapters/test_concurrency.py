"""Concurrent reconciles of one customer (webhook, sweep and client sync at once) converge once."""

import threading

from sqlalchemy import func, select

from engine.ports import Cause, CauseKind
from persistence.models import AuditEntry, Grant
from persistence.unit_of_work import unit_of_work
from tests.support import reconcile_now


def test_parallel_reconciles_of_one_customer_grant_once(runtime, simulator):
    simulator.state.purchase_subscription("alice", "premium_monthly")
    simulator.state.purchase_non_renewing("alice", "geometry_pack_30")
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def reconcile(kind: CauseKind) -> None:
        try:
            barrier.wait()
            reconcile_now(runtime, "alice", cause=Cause(kind))
        except BaseException as exc:
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


def test_a_transaction_two_customers_share_is_merged_by_one_reconcile_at_a_time(runtime):
    """A TRANSFER leaves one ledger row that both customers' reconciles read and write: the
    second waits for the first and merges into what it wrote (PostgreSQL row locks; SQLite
    runs one writer at a time anyway)."""
    import dataclasses
    import time

    import pytest

    from engine.facts import Transaction

    if runtime.db.dialect.name != "postgresql":
        pytest.skip("SQLite serialises writers: there is no interleaving to guard against")
    with unit_of_work(runtime.session_factory)() as uow:
        uow.ledger.save_transactions([Transaction("t1", product_id="p", owner="alice")])
    seen_by_bob: list[Transaction] = []

    def bob() -> None:
        with unit_of_work(runtime.session_factory)() as uow:
            seen_by_bob.append(uow.ledger.transactions(["bob"], ["t1"])["t1"])

    with unit_of_work(runtime.session_factory)() as uow:
        [t1] = uow.ledger.transactions(["alice"], []).values()
        reader = threading.Thread(target=bob)
        reader.start()
        time.sleep(0.3)
        assert seen_by_bob == []  # bob's reconcile waits for alice's
        uow.ledger.save_transactions([dataclasses.replace(t1, owner=None)])  # alice's snapshot no longer lists it
    reader.join(timeout=10)
    assert [t.owner for t in seen_by_bob] == [None]  # bob merges into alice's write, not the old row
