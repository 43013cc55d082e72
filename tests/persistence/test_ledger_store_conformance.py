"""The LedgerStore port's contract, run against the SQL store and the in-memory one: both must
behave alike, so reconcile tested with either is reconcile as deployed."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest

from engine.access import Access
from engine.facts import SubscriberSnapshot, Transaction
from engine.plan import Action
from engine.ports import Cause, CustomerState, UnitOfWork
from persistence.unit_of_work import unit_of_work
from tests.memory_store import MemoryDatabase

UowFactory = Callable[[], AbstractContextManager[UnitOfWork]]
NOW = 1_800_000_000_000


@pytest.fixture(params=["sql", "memory"])
def uow(request) -> UowFactory:
    if request.param == "memory":
        return MemoryDatabase().unit_of_work
    wiring = request.getfixturevalue("runtime")
    return unit_of_work(wiring.session_factory)


def tx(tx_id: str, owner: str | None, **fields: Any) -> Transaction:
    return Transaction(tx_id, product_id="premium_monthly", kind="subscription", owner=owner, **fields)


def test_locking_an_unknown_customer_creates_it_clean(uow):
    with uow() as u:
        assert u.ledger.lock_customer("alice") == CustomerState("alice", None, None, False, None, None)
    with uow() as u:
        assert u.ledger.lock_customer("alice").customer_id == "alice"


def test_identities_resolve_and_move(uow):
    with uow() as u:
        u.ledger.record_identities({"$RCAnonymousID:1": "alice", "alice": "alice"})
    with uow() as u:
        assert u.ledger.customer_for("$RCAnonymousID:1") == "alice" and u.ledger.customer_for("nobody") is None
        u.ledger.record_identities({"$RCAnonymousID:1": "bob"})
    with uow() as u:
        assert u.ledger.customer_for("$RCAnonymousID:1") == "bob"


def test_transactions_are_read_by_owner_and_by_id(uow):
    with uow() as u:
        u.ledger.save_transactions([tx("t1", "alice"), tx("t2", "bob"), tx("t3", None)])
    with uow() as u:
        assert set(u.ledger.transactions(["alice"], [])) == {"t1"}
        assert set(u.ledger.transactions([], ["t2", "t3"])) == {"t2", "t3"}
        assert set(u.ledger.transactions(["alice"], ["t3"])) == {"t1", "t3"}
        assert u.ledger.transactions([], []) == {}
        u.ledger.save_transactions([tx("t1", "bob", expires_ms=NOW, observed={"expires_ms": NOW})])
    with uow() as u:
        assert set(u.ledger.transactions(["bob"], [])) == {"t1", "t2"}
        moved = u.ledger.transactions(["bob"], [])["t1"]
        assert (moved.transaction_id, moved.expires_ms, dict(moved.observed)) == ("t1", NOW, {"expires_ms": NOW})


def test_a_snapshot_and_its_check_mark_the_customer(uow):
    with uow() as u:
        u.ledger.lock_customer("alice")
        u.ledger.save_snapshot("alice", NOW, "digest-1", {"subscriber": {}})
        u.ledger.mark_checked("alice", now_ms=NOW, next_check_ms=NOW + 1, dirty=False, projection=(NOW + 5, "key"))
    with uow() as u:
        assert u.ledger.lock_customer("alice") == CustomerState("alice", NOW, "digest-1", False, NOW + 5, "key")
        u.ledger.mark_checked("alice", now_ms=NOW, next_check_ms=NOW, dirty=True)
    with uow() as u:
        state = u.ledger.lock_customer("alice")
        assert state.dirty and state.snapshot_digest == "digest-1" and state.projection_key == "key"


def test_grants_are_applied_and_read_back(uow):
    paid = Access("course:H01ENB", "paid", None, ("t1",))
    monthly = Access("module:algebra", "full", NOW, ("t2",))
    longer = Access("module:algebra", "full", NOW + 1000, ("t2", "t3"))
    with uow() as u:
        u.ledger.lock_customer("alice")
        u.ledger.apply(
            "alice",
            [Action("grant", paid.resource, None, paid), Action("grant", monthly.resource, None, monthly)],
            Cause("event"),
            NOW,
        )
    with uow() as u:
        assert u.ledger.granted("alice") == [paid, monthly] and u.ledger.granted("bob") == []
        u.ledger.apply(
            "alice",
            [Action("extend", monthly.resource, monthly, longer), Action("revoke", paid.resource, paid, None)],
            Cause("sweep"),
            NOW,
        )
    with uow() as u:
        assert u.ledger.granted("alice") == [longer]


def test_settle_unchanged_moves_only_what_the_rule_allows(uow):
    with uow() as u:
        for customer in ["alice", "bob"]:
            u.ledger.lock_customer(customer)
            u.ledger.mark_checked(customer, now_ms=NOW, next_check_ms=NOW, dirty=True)
    snapshots = {c: SubscriberSnapshot(c, NOW, (), frozenset(), "d") for c in ["alice", "bob", "carol"]}
    snapshots["$alias"] = SubscriberSnapshot("alice", NOW, (), frozenset(), "d")  # an alias: never settled here

    def rule(state: CustomerState, snapshot: SubscriberSnapshot) -> int | None:
        return NOW + 60_000 if state.customer_id == "alice" else None

    with uow() as u:
        assert u.ledger.settle_unchanged(snapshots, rule, NOW) == {"alice"}
    with uow() as u:
        assert not u.ledger.lock_customer("alice").dirty and u.ledger.lock_customer("bob").dirty


def test_a_unit_of_work_that_fails_leaves_nothing_behind(uow):
    def write_then_fail() -> None:
        with uow() as u:
            u.ledger.lock_customer("alice")
            u.ledger.save_transactions([tx("t1", "alice")])
            raise RuntimeError("abort")

    with pytest.raises(RuntimeError):
        write_then_fail()
    with uow() as u:
        assert u.ledger.transactions(["alice"], ["t1"]) == {}
