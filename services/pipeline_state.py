"""The pipeline's state right now, as the console's overview and Prometheus's gauges read it:
what waits in the inbox and the LMS outbox and since when, the provider budget, unknown
products. Every query here walks an index (persistence/console_queries.py), so a scrape or a
page costs the same with a million rows."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.core import Metric

from adapters.metrics import gauge
from persistence.console_queries import Backlog, inbox_backlog, outbox_backlog, unknown_product_count
from persistence.inbox_rows import inbox_counts
from persistence.subscribers import count_due
from services.clock import wall_clock_ms
from services.wiring import Wiring


@dataclass(frozen=True)
class BudgetUse:
    used: int  # requests in the current one-minute window
    limit: int  # per minute
    paused_for_s: float  # a 429 paused every process for this long

    @property
    def ratio(self) -> float:
        return self.used / self.limit if self.limit else 0.0


@dataclass(frozen=True)
class PipelineState:
    inbox: Backlog  # rows not final yet (received, processing, retrying)
    outbox: Backlog  # LMS changes pending
    budget: BudgetUse
    unknown_products: int


def budget_use(wiring: Wiring) -> BudgetUse:
    budget = wiring.budget
    return BudgetUse(budget.used_in_window(), budget.per_minute, budget.paused_for_s())


def pipeline_state(wiring: Wiring, *, now_ms: int | None = None) -> PipelineState:
    now = wall_clock_ms() if now_ms is None else now_ms
    factory = wiring.session_factory
    return PipelineState(
        inbox=inbox_backlog(factory, now_ms=now),
        outbox=outbox_backlog(factory, now_ms=now),
        budget=budget_use(wiring),
        unknown_products=unknown_product_count(factory),
    )


def pipeline_gauges(wiring: Wiring) -> Iterator[Metric]:
    """The gauges of ``/metrics``, read at scrape time from the database and Redis (shared by
    every process, so any web process answers for all)."""
    now = wall_clock_ms()
    state = pipeline_state(wiring, now_ms=now)
    yield gauge("engine_inbox_backlog", "Webhooks stored and not processed yet.", state.inbox.rows)
    yield gauge(
        "engine_inbox_oldest_unprocessed_age_seconds",
        "Age of the oldest webhook not processed yet (0 when none waits).",
        state.inbox.oldest_age_s,
    )
    yield gauge("engine_outbox_backlog", "LMS enrollment changes waiting to be sent.", state.outbox.rows)
    yield gauge(
        "engine_outbox_oldest_pending_age_seconds",
        "Age of the oldest LMS change waiting to be sent (0 when none waits).",
        state.outbox.oldest_age_s,
    )
    yield gauge(
        "engine_provider_budget_used_ratio",
        "Share of the provider's per-minute request budget used in the last minute (0 to 1).",
        state.budget.ratio,
    )
    yield gauge("engine_provider_budget_used", "Provider requests sent in the last minute.", state.budget.used)
    yield gauge("engine_provider_budget_limit", "Provider requests allowed per minute.", state.budget.limit)
    yield gauge(
        "engine_provider_budget_paused_seconds",
        "Seconds the provider budget stays paused after a 429 (0: not paused).",
        state.budget.paused_for_s,
    )
    yield gauge(
        "engine_unknown_products", "Store products the catalog lacks, seen in purchases.", state.unknown_products
    )
    yield gauge(
        "engine_inbox_events",
        "Stored webhooks by status.",
        status={s: float(n) for s, n in inbox_counts(wiring.session_factory).items()},
    )
    yield gauge(
        "engine_subscribers_due",
        "Customers whose provider read is due now.",
        count_due(wiring.session_factory, now_ms=now),
    )
