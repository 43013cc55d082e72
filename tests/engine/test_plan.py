"""diff_access: one action per differing resource, deterministic, empty when equal."""

from engine.access import Access
from engine.plan import diff_access

DAY = 86_400_000


def test_empty_when_nothing_differs_even_if_sources_do():
    desired = [Access("a", "full", 10 * DAY, ("t2",))]
    granted = [Access("a", "full", 10 * DAY, ("t1",))]
    assert diff_access(desired, granted) == []


def test_each_kind_of_action():
    desired = [
        Access("grant-me", "full", None),
        Access("extend-me", "full", 20 * DAY),
        Access("shorten-me", "full", 5 * DAY),
        Access("mode-me", "professional", 5 * DAY),
        Access("forever", "full", None),
    ]
    granted = [
        Access("extend-me", "full", 10 * DAY),
        Access("shorten-me", "full", 10 * DAY),
        Access("mode-me", "audit", 5 * DAY),
        Access("revoke-me", "full", 10 * DAY),
        Access("forever", "full", 10 * DAY),
    ]
    plan = diff_access(desired, granted)
    assert [(a.resource, a.kind) for a in plan] == [
        ("extend-me", "extend"),
        ("forever", "extend"),
        ("grant-me", "grant"),
        ("mode-me", "change_mode"),
        ("revoke-me", "revoke"),
        ("shorten-me", "shorten"),
    ]
    assert {a.kind: a.drift_kind for a in plan}["revoke"] == "missed_revocation"


def test_lifetime_to_expiring_is_a_shortening():
    plan = diff_access([Access("a", "full", 5 * DAY)], [Access("a", "full", None)])
    assert [a.kind for a in plan] == ["shorten"]


def test_diff_is_deterministic_whatever_the_input_order():
    desired = [Access(r, "full", None) for r in "cab"]
    assert diff_access(desired, []) == diff_access(list(reversed(desired)), [])
