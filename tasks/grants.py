"""Grant tasks: revoke (or shorten) grants whose expiry passed, from the ledger alone."""

from __future__ import annotations

from celery import Task

from config.observability import beat_check_in
from engine.ports import Cause
from engine.reconcile import Reading
from persistence.subscribers import customers_with_due_expiry
from services.clock import wall_clock_ms
from tasks.declare import every_s, task, wiring_of
from tasks.lms import drain_after_commit
from tasks.names import GRANTS_EXPIRE


@task(GRANTS_EXPIRE, bind=True)
def expire(self: Task) -> int:
    """Converge every customer holding a grant whose expiry passed (no provider call)."""
    wiring = wiring_of(self)
    wiring.metrics.job_ran("grants-expire")
    with beat_check_in("grants-expire", every_s(self, "expire-grants", 60)):
        outcomes = [
            wiring.convergence.reconcile(Reading.from_ledger(customer_id), Cause("expiry"))
            for customer_id in customers_with_due_expiry(wiring.session_factory, now_ms=wall_clock_ms())
        ]
    drain_after_commit(self.app, wiring, outcomes)
    return sum(len(o.actions) for o in outcomes)
