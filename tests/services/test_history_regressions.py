"""Histories the v2 property test (tests/services/test_history_property.py) once failed on, run
deterministically."""

from __future__ import annotations

import pytest

from tests.services.test_history_property import Op, run_history

HISTORIES = {
    # ana's first purchase webhook is lost; ben's renewal moves the clock past ana's period end;
    # ana then buys a new subscription (a new chain): v1 lists only it, the first one only v2.
    "lost first subscription, then a new one after it ended": [
        Op("buy", 0, 0, 0, True, 1),
        *[Op("buy", 0, 0, 0, False, 1)] * 7,  # no-ops: ana's subscription runs
        Op("buy", 1, 0, 0, False, 1),
        Op("renew", 1, 0, 0, False, 1),
        Op("buy", 0, 0, 0, False, 1),
    ],
    # ana's subscription runs (the buys after the first are no-ops); ben's purchase webhook is
    # lost, his renewal's arrives, then he refunds the renewal (its webhook arrives): the refunded
    # period must not be credited.
    "refund of a renewal after a lost purchase": [
        *[Op("buy", 0, 0, 0, False, 1)] * 8,
        Op("buy", 1, 0, 0, True, 1),
        Op("renew", 1, 0, 0, False, 1),
        Op("refund", 1, 0, 0, False, 1),
    ],
    # ben's week ends; he transfers the ended subscription to ana (first seen then) and the
    # TRANSFER webhook is lost; ana buys a new one (an hour on: see the property test's docstring):
    # v1 lists only her new chain, v2 the transferred one too (read: seen_before).
    "an ended subscription transferred with its webhook lost, then a new one bought": [
        *[Op("buy", 1, 0, 0, False, 1)] * 5,
        Op("wait", 0, 0, 0, False, 1),
        Op("wait", 0, 0, 5, False, 1),
        Op("transfer", 1, 0, 0, True, 1),
        Op("buy", 0, 0, 0, False, 1),
    ],
}


@pytest.mark.parametrize("history", HISTORIES.values(), ids=HISTORIES.keys())
def test_every_paid_period_is_credited_once_to_its_holder(base_settings, clean_state, history):
    run_history(base_settings, history, v1_only=False)
