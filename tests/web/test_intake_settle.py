"""web.intake._settle_greenlets: the group-commit writer's wait under load ends when the gevent
worker has nothing else to do, and after SETTLE_MAX_S when it never goes idle."""

from __future__ import annotations

import time

import gevent

from web import intake


def test_settle_returns_once_the_loop_is_idle_not_at_its_cap(monkeypatch):
    monkeypatch.setattr(intake, "SETTLE_MAX_S", 5.0)
    done = []
    gevent.spawn(lambda: (gevent.sleep(0), done.append(True)))  # runnable work: it goes first
    started = time.perf_counter()
    intake._settle_greenlets()
    assert done == [True]
    assert time.perf_counter() - started < 1.0


def test_settle_ends_at_its_cap_when_the_loop_stays_busy(monkeypatch):
    monkeypatch.setattr(intake, "SETTLE_MAX_S", 0.05)
    busy = True

    def spin() -> None:
        while busy:
            gevent.sleep(0)  # always another event pending: the loop is never idle

    spinner = gevent.spawn(spin)
    try:
        gevent.sleep(0)
        started = time.perf_counter()
        intake._settle_greenlets()
        elapsed = time.perf_counter() - started
        # gevent checks its timers between rounds of callbacks (every 5 ms with callbacks alone)
        assert 0.05 <= elapsed < 0.5
    finally:
        busy = False
        spinner.join(1)
