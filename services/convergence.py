"""Convergence as the services use it: ``engine.reconcile`` bound to this process's stores,
catalog, policy and clock. Every service that changes grants goes through ``Convergence.reconcile``
with what it read (event, sweep, discovery, sync, validate, CLI, expiry, degraded mode)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from sqlalchemy import Connection
from sqlalchemy.orm import Session, sessionmaker

from adapters.metrics import Metrics
from engine.catalog import Catalog
from engine.facts import SubscriberSnapshot
from engine.ports import Cause
from engine.reconcile import Reading, ReconcileOutcome, ReconcilePolicy, reconcile, settle_unchanged
from persistence.unit_of_work import SqlUnitOfWork
from services.clock import wall_clock_ms


@dataclass(frozen=True)
class Convergence:
    """``reconcile`` with its dependencies bound. ``bound_to`` runs every unit of work on one
    connection (a sweep batch's); ``dry_run`` rolls every unit of work back."""

    session_factory: sessionmaker[Session]
    catalog: Catalog
    policy: ReconcilePolicy
    clock_ms: Callable[[], int] = wall_clock_ms
    connection: Connection | None = None
    commit: bool = True
    metrics: Metrics | None = None  # reconciles by cause, drift by kind (never in a dry run)

    def unit_of_work(self) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.session_factory, commit=self.commit, bind=self.connection)

    def bound_to(self, connection: Connection) -> Convergence:
        return replace(self, connection=connection)

    def dry_run(self) -> Convergence:
        return replace(self, commit=False)

    def reconcile(self, reading: Reading, cause: Cause) -> ReconcileOutcome:
        outcome = reconcile(
            reading,
            unit_of_work=self.unit_of_work,
            catalog=self.catalog,
            now_ms=self.clock_ms(),
            cause=cause,
            policy=self.policy,
        )
        if self.metrics is not None and self.commit:
            self.metrics.reconciled(cause, outcome.actions)
        return outcome

    def settle_unchanged(self, snapshots: Mapping[str, SubscriberSnapshot]) -> set[str]:
        return settle_unchanged(
            snapshots, unit_of_work=self.unit_of_work, catalog=self.catalog, now_ms=self.clock_ms(), policy=self.policy
        )
