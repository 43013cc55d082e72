"""Discovery: when the next pass over the provider's customer list starts, and which customers
of a listed page the engine does not know. Pure.

A pass pages through every customer the provider lists (REST API v2) and reconciles each one
the engine never heard of: a customer whose every webhook was lost. The pass's cursor is kept
between runs, so a pass spans as many runs as the budget needs; once it finishes, the next one
starts ``next_pass_ms`` later.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

MIN_CHOSEN_INTERVAL_MS = 15 * 60_000
MAX_CHOSEN_INTERVAL_MS = 6 * 3600_000


def next_pass_ms(*, started_ms: int, finished_ms: int, interval_s: int) -> int:
    """When the pass after one that ran from ``started_ms`` to ``finished_ms`` may start.

    ``interval_s`` > 0: that long after it finished. 0, the engine chooses: as long after it
    finished as it took, at least 15 minutes and at most 6 hours. So discovery lists at most
    about half the time (the rest of its budget share goes back to the sweep), a small project
    is listed again every quarter of an hour for a handful of requests, and a customer whose
    every webhook was lost is found within about two pass durations.
    """
    if interval_s > 0:
        return finished_ms + interval_s * 1000
    took = max(0, finished_ms - started_ms)
    return finished_ms + min(MAX_CHOSEN_INTERVAL_MS, max(MIN_CHOSEN_INTERVAL_MS, took))


def listed_ids(customers: Iterable[Mapping[str, Any]]) -> list[str]:
    """The customer ids of one listed page, in the provider's order, each once (items without
    an id are skipped: nothing could be read for them)."""
    ids = (str(c["id"]) for c in customers if isinstance(c.get("id"), str) and c["id"])
    return list(dict.fromkeys(ids))


def unknown_ids(listed: Iterable[str], known: Collection[str]) -> list[str]:
    """The listed customers the engine does not know, in the provider's order."""
    return [customer_id for customer_id in listed if customer_id not in known]
