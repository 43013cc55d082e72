"""Discovery task: work on the open pass over the provider's customer list (services/discovery.py)."""

from __future__ import annotations

from typing import Any

from celery import Task

from config.observability import beat_check_in
from services.discovery import run_discovery
from services.wiring import discovery_tick_s
from tasks.declare import every_s, task, wiring_of
from tasks.names import DISCOVERY_RUN


@task(DISCOVERY_RUN, bind=True)
def run(self: Task) -> dict[str, Any]:
    """One time-boxed run of discovery; nothing without REST API v2."""
    wiring = wiring_of(self)
    discovery = wiring.discovery
    if discovery is None:
        return {"skipped": "REST API v2 is not configured"}
    wiring.metrics.job_ran("discovery")
    with beat_check_in("discovery", every_s(self, "discovery", discovery_tick_s(wiring.settings))):
        return run_discovery(discovery).summary()
