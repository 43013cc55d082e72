"""Discovery's pure rules: when the next pass starts, which listed customers are new, and the
drift kind of what discovery grants."""

from __future__ import annotations

import pytest

from engine.access import Access
from engine.discovery import (
    MAX_CHOSEN_INTERVAL_MS,
    MIN_CHOSEN_INTERVAL_MS,
    listed_ids,
    next_pass_ms,
    unknown_ids,
)
from engine.plan import UNDISCOVERED_CUSTOMER, Action
from engine.ports import Cause

MIN = 60_000
HOUR = 60 * MIN


@pytest.mark.parametrize(
    ("started", "finished", "interval_s", "expected"),
    [
        (0, 10 * MIN, 3600, 10 * MIN + HOUR),  # set: that long after the pass finished
        (0, 10 * MIN, 1, 10 * MIN + 1000),
        (0, 10 * MIN, 0, 10 * MIN + MIN_CHOSEN_INTERVAL_MS),  # chosen: a short pass waits a quarter hour
        (0, 2 * HOUR, 0, 4 * HOUR),  # chosen: as long as the pass took
        (0, 20 * HOUR, 0, 20 * HOUR + MAX_CHOSEN_INTERVAL_MS),  # chosen: at most 6 h
        (5 * MIN, 0, 0, MIN_CHOSEN_INTERVAL_MS),  # a clock that went back: the floor
    ],
)
def test_the_next_pass_starts_after_the_interval_or_as_the_engine_chooses(started, finished, interval_s, expected):
    assert next_pass_ms(started_ms=started, finished_ms=finished, interval_s=interval_s) == expected


def test_a_listed_page_gives_each_customer_once_in_order_and_the_new_ones():
    page: list[dict[str, object]] = [
        {"id": "b"},
        {"id": "a"},
        {"id": "b"},
        {"object": "customer"},
        {"id": ""},
        {"id": 7},
        {"id": "c"},
    ]
    assert listed_ids(page) == ["b", "a", "c"]
    assert unknown_ids(["b", "a", "c"], {"a"}) == ["b", "c"]
    assert unknown_ids([], {"a"}) == []


GRANT = Action("grant", "course:H01ENB", None, Access("course:H01ENB", "paid", None, ("t1",)))
EXTEND = Action(
    "extend",
    "module:algebra",
    Access("module:algebra", "full", 1, ("t1",)),
    Access("module:algebra", "full", 2, ("t2",)),
)


@pytest.mark.parametrize(
    ("cause", "action", "kind"),
    [
        (Cause("discovery", "discovery:1"), GRANT, UNDISCOVERED_CUSTOMER),
        (Cause("discovery", "discovery:1"), EXTEND, "wrong_expiry"),  # not a new customer's grant
        (Cause("sweep"), GRANT, "missed_grant"),
        (Cause("operator", "cli"), GRANT, "missed_grant"),
        (Cause("event", "RENEWAL:e1"), GRANT, None),  # a webhook asked for it: no drift
        (Cause("request"), GRANT, None),
        (Cause("expiry"), EXTEND, None),
    ],
)
def test_what_discovery_grants_is_drift_of_its_own_kind(cause, action, kind):
    assert cause.drift_kind(action) == kind
    assert cause.is_drift_repair == (kind is not None)
