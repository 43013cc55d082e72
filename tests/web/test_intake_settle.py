"""web.intake.settle_greenlets: the group-commit writer's wait under load lets every greenlet
that can run go first, and it also ends while the gevent worker stays busy (bounded by
SETTLE_MAX_S): it returns, and the busy work is still running when it does."""

from __future__ import annotations

import gevent

from web import intake


def test_settle_lets_the_runnable_greenlets_go_first(monkeypatch):
    monkeypatch.setattr(intake, "SETTLE_MAX_S", 60.0)  # a cap it must not need
    done: list[str] = []

    def runnable_work() -> None:
        gevent.sleep(0)
        done.append("runnable work")

    gevent.spawn(runnable_work)
    intake.settle_greenlets()
    done.append("settled")
    assert done == ["runnable work", "settled"]


def test_settle_ends_while_the_loop_stays_busy(monkeypatch):
    monkeypatch.setattr(intake, "SETTLE_MAX_S", 0.05)
    spins = [0]
    busy = [True]

    def spin() -> None:
        while busy[0]:
            spins[0] += 1
            gevent.sleep(0)  # always another event pending: the loop is never idle

    spinner = gevent.spawn(spin)
    try:
        gevent.sleep(0)
        intake.settle_greenlets()
        # it returned at its cap, not because the loop went idle: the spinner still runs
        assert not spinner.dead and spins[0] > 0
    finally:
        busy[0] = False
        spinner.join(1)
    assert spinner.dead
