"""The wiring of one process: the adapters, stores and services built from the Settings once per
process, after fork (SQLAlchemy engines and Redis connections must not cross one), typed.

Web views and tasks take from it the one service object their use case needs
(``event_processing``, ``sweep_reads``, ``client_flows``, ``convergence``...) and pass on
nothing else.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property

from redis import Redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from adapters.access_notifications import AccessNotifier, AccessWatch
from adapters.embedded_redis import redis_url
from adapters.metrics import Metrics
from adapters.openedx import OpenEdxClient, OpenEdxSink
from adapters.provider_health import ProviderHealth
from adapters.rate_budget import BudgetedProvider, Priority, RateBudget
from adapters.revenuecat import RevenueCatClient
from adapters.revenuecat_v2 import RevenueCatV2Client
from config.settings import Settings
from engine.catalog import Catalog, load_catalog
from engine.ports import CourseSink
from engine.reconcile import ReconcilePolicy
from persistence.change_notes import install_change_notifications
from persistence.database import make_engine, make_session_factory
from services.client import CLIENT_BUDGET_WAIT_S, ClientFlows
from services.clock import wall_clock_ms
from services.convergence import Convergence
from services.discovery import DiscoveryReads
from services.history import HistoryReads, ReadPath, ReadTally
from services.inbox import EventProcessing
from services.sweep import SweepReads
from services.sweep_connections import RECONCILE_OVERLAP

EVENT_BUDGET_WAIT_S = 5.0  # events wait a little for budget (they come before the sweep), then retry
SWEEP_BUDGET_WAIT_S = 20.0
# Discovery comes last: it waits this long for a slot at most, then its run ends (cursor kept).
DISCOVERY_BUDGET_WAIT_S = 10.0
# Beat asks discovery to work on its pass this often (at most; the sweep's interval if shorter),
# and a run stops a little before the next one is due.
DISCOVERY_TICK_MAX_S = 30


class Wiring:
    """Everything one process builds from its Settings, each part on first use."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.pid = os.getpid()

    # -- stores -----------------------------------------------------------------------------
    @cached_property
    def db(self) -> Engine:
        return make_engine(self.settings)

    @cached_property
    def intake_db(self) -> Engine:
        """The engine the webhook intake stores with: on PostgreSQL in AUTOCOMMIT (its one INSERT
        commits by itself, no BEGIN/COMMIT round trips) and without the checkout ping (a second
        round trip per webhook; persistence.inbox retries once on a dead connection)."""
        if not self.settings.database_url.startswith("postgresql"):
            return self.db
        return make_engine(self.settings, pool_pre_ping=False, isolation_level="AUTOCOMMIT")

    @cached_property
    def session_factory(self) -> sessionmaker[Session]:
        factory = make_session_factory(self.db)
        # Long-polls wake on committed grant changes.
        install_change_notifications(factory, self.access_notifier.publish)
        return factory

    @cached_property
    def catalog(self) -> Catalog:
        return load_catalog(self.settings.catalog_path)

    @cached_property
    def policy(self) -> ReconcilePolicy:
        return ReconcilePolicy(
            grant_sandbox=self.settings.grant_sandbox, max_staleness_ms=self.settings.max_staleness_s * 1000
        )

    @cached_property
    def convergence(self) -> Convergence:
        return Convergence(self.session_factory, self.catalog, self.policy, wall_clock_ms, metrics=self.metrics)

    # -- Redis ------------------------------------------------------------------------------
    @cached_property
    def redis(self) -> Redis:
        return Redis.from_url(redis_url(self.settings), socket_timeout=10, socket_connect_timeout=2)

    def _redis_client(self, *, socket_timeout: float | None) -> Redis:
        return Redis.from_url(redis_url(self.settings), socket_timeout=socket_timeout, socket_connect_timeout=2)

    @cached_property
    def access_notifier(self) -> AccessNotifier:
        # Its own client with a short timeout: publishing follows a commit, it must not linger.
        return AccessNotifier(lambda: self._redis_client(socket_timeout=1.0))

    @cached_property
    def access_watch(self) -> AccessWatch:
        """This process's subscription to access changes (long-polls wait on it)."""
        return AccessWatch(lambda: self._redis_client(socket_timeout=None))

    @cached_property
    def budget(self) -> RateBudget:
        return RateBudget(
            self.redis, self.settings.provider_rate_per_minute, discovery_share=self.settings.discovery_budget_share
        )

    @cached_property
    def provider_health(self) -> ProviderHealth:
        return ProviderHealth(self.redis)

    @cached_property
    def metrics(self) -> Metrics:
        return Metrics(self.redis)

    # -- outside systems --------------------------------------------------------------------
    @cached_property
    def provider(self) -> RevenueCatClient:
        return RevenueCatClient(
            self.settings.revenuecat_api_url,
            self.settings.revenuecat_api_key,
            connect_timeout_s=self.settings.provider_connect_timeout_s,
            read_timeout_s=self.settings.provider_read_timeout_s,
            observe=self.metrics.provider_request,
        )

    @cached_property
    def provider_v2(self) -> RevenueCatV2Client | None:
        """REST API v2 (discovery, full histories), when a project and a v2 key are configured."""
        s = self.settings
        if not s.revenuecat_v2_enabled:
            return None
        return RevenueCatV2Client(
            s.revenuecat_api_url,
            s.revenuecat_v2_api_key,
            s.revenuecat_project_id,
            connect_timeout_s=s.provider_connect_timeout_s,
            read_timeout_s=s.provider_read_timeout_s,
        )

    def budgeted_provider(self, priority: Priority, *, max_wait_s: float) -> BudgetedProvider:
        """The provider client drawing on the shared rate budget at ``priority``."""
        return BudgetedProvider(self.provider, self.budget, priority, max_wait_s=max_wait_s)

    @cached_property
    def read_tally(self) -> ReadTally:
        """This process's customer reads and their provider requests, by path."""
        return ReadTally()

    def history_reads(self, path: ReadPath, pacer: BudgetedProvider) -> HistoryReads:
        """What follows a v1 read on ``path``: a v2 history where needed (when v2 is configured),
        its requests paced by ``pacer`` (the path's budget priority), every read counted."""
        v2 = self.provider_v2
        return HistoryReads(
            self.convergence,
            v2.paced(pacer) if v2 is not None else None,
            path,
            metrics=self.metrics,
            tally=self.read_tally,
        )

    @cached_property
    def course_sink(self) -> CourseSink | None:
        """The LMS that course grants land in (Open edX), or None when it is not configured."""
        s = self.settings
        if not s.openedx_enabled:
            return None
        client = OpenEdxClient(
            s.openedx_lms_url,
            client_id=s.openedx_client_id,
            client_secret=s.openedx_client_secret,
            api_key=s.openedx_api_key,
            budget=self.lms_budget,
            budget_wait_s=s.openedx_budget_wait_s,
            connect_timeout_s=s.provider_connect_timeout_s,
            read_timeout_s=s.provider_read_timeout_s,
        )
        return OpenEdxSink(client)

    @cached_property
    def lms_budget(self) -> RateBudget:
        """The LMS's own request budget for JWT calls (its staff throttle), apart from the provider's."""
        return RateBudget(self.redis, self.settings.openedx_jwt_rate_per_minute, name="openedx")

    # -- thread pools -----------------------------------------------------------------------
    @cached_property
    def fetch_pool(self) -> ThreadPoolExecutor:
        """Threads the sweep reads the provider on, several at once (its latency overlaps)."""
        workers = max(1, self.settings.provider_fetch_concurrency)
        return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="provider-read")

    @cached_property
    def reconcile_pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=RECONCILE_OVERLAP, thread_name_prefix="reconcile")

    # -- services ---------------------------------------------------------------------------
    @cached_property
    def event_processing(self) -> EventProcessing:
        provider = self.budgeted_provider("event", max_wait_s=EVENT_BUDGET_WAIT_S)
        return EventProcessing(
            session_factory=self.session_factory,
            convergence=self.convergence,
            provider=provider,
            max_attempts=self.settings.task_max_retries + 1,
            retry_cap_ms=self.settings.retry_backoff_max_s * 1000,
            metrics=self.metrics,
            history=self.history_reads("event", provider),
        )

    @cached_property
    def sweep_reads(self) -> SweepReads:
        provider = self.budgeted_provider("sweep", max_wait_s=SWEEP_BUDGET_WAIT_S)
        return SweepReads(
            convergence=self.convergence,
            provider=provider,
            db=self.db,
            fetch_pool=self.fetch_pool,
            reconcile_pool=self.reconcile_pool,
            fetch_concurrency=self.settings.provider_fetch_concurrency,
            metrics=self.metrics,
            health=self.provider_health,
            history=self.history_reads("sweep", provider),
        )

    @cached_property
    def discovery(self) -> DiscoveryReads | None:
        """Discovery over the provider's customer list, when REST API v2 is configured."""
        if self.provider_v2 is None:
            return None
        pacer = BudgetedProvider(self.provider, self.budget, "discovery", max_wait_s=DISCOVERY_BUDGET_WAIT_S)
        return DiscoveryReads(
            convergence=self.convergence,
            client=self.provider_v2.paced(pacer),
            metrics=self.metrics,
            interval_s=self.settings.discovery_interval_s,
            run_s=discovery_run_s(self.settings),
        )

    @cached_property
    def client_flows(self) -> ClientFlows:
        provider = self.budgeted_provider("sync", max_wait_s=CLIENT_BUDGET_WAIT_S)
        return ClientFlows(self.convergence, provider, history=self.history_reads("sync", provider))

    def build(self) -> Wiring:
        """Build what every process needs now instead of on first use (after a fork: the first
        request or task does not pay for it, and no two threads race to build one part)."""
        _ = self.session_factory, self.redis, self.budget  # the catalog is checked at start-up, read on first use
        return self

    def close(self) -> None:
        """Release what was built; ``wiring_for`` then builds a new Wiring for these settings
        (a closed one handed out again would fail on its shut pools)."""
        for key, wiring in list(_wirings.items()):
            if wiring is self:
                del _wirings[key]
        built = self.__dict__
        if "provider" in built:
            self.provider.close()
        if built.get("provider_v2") is not None:
            built["provider_v2"].close()
        if isinstance(built.get("course_sink"), OpenEdxSink):
            built["course_sink"].client.close()
        for pool in ("fetch_pool", "reconcile_pool"):
            if pool in built:
                built[pool].shutdown(wait=True)
        if "access_watch" in built:
            self.access_watch.stop()
        if "access_notifier" in built:
            self.access_notifier.close()
        if "metrics" in built:
            self.metrics.close()
        if "intake_db" in built:
            self.intake_db.dispose()
        if "db" in built:
            self.db.dispose()
        if "redis" in built:
            self.redis.close()


def discovery_tick_s(settings: Settings) -> int:
    """How often beat runs discovery (tasks/celery_app.py): as often as the sweep, at most every
    DISCOVERY_TICK_MAX_S, so that a pass advances about all the time while one is open."""
    return max(1, min(settings.sweep_interval_s, DISCOVERY_TICK_MAX_S))


def discovery_run_s(settings: Settings) -> float:
    """The time box of one discovery run: until a little before the next tick, at least 5 s."""
    return float(max(5, discovery_tick_s(settings) - 5))


_wirings: dict[tuple[int, Settings], Wiring] = {}


def wiring_for(settings: Settings) -> Wiring:
    """This process's Wiring for ``settings`` (a forked child gets its own)."""
    key = (os.getpid(), settings)
    wiring = _wirings.get(key)
    if wiring is None:
        wiring = _wirings[key] = Wiring(settings)
    return wiring
