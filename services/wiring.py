"""Runtime: the adapters one process needs (DB engine, provider client, catalog), built once
per process from the Settings, and rebuilt after a fork (SQLAlchemy engines must not cross one)."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from adapters.access_notifications import AccessNotifier, AccessWatch
from adapters.embedded_redis import redis_url
from adapters.metrics import Metrics
from adapters.openedx import OpenEdxClient, OpenEdxSink
from adapters.rate_budget import BudgetedProvider, Priority, RateBudget
from adapters.revenuecat import RevenueCatClient
from config.settings import Settings
from engine.catalog import Catalog, load_catalog
from engine.ports import CourseSink
from engine.reconcile import ReconcilePolicy
from persistence.change_notes import install_change_notifications
from persistence.database import make_engine, make_session_factory
from services.inbox import EventProcessing

RECONCILE_OVERLAP = 2  # see Runtime.reconcile_pool


def wall_clock_ms() -> int:
    """The one place that reads the clock for the engine; pure code receives ``now_ms``."""
    return int(time.time() * 1000)


@dataclass
class Runtime:
    settings: Settings
    pid: int = field(default_factory=os.getpid)

    @cached_property
    def db(self) -> Engine:
        return make_engine(self.settings)

    @cached_property
    def session_factory(self) -> sessionmaker[Session]:
        factory = make_session_factory(self.db)
        # Long-polls wake on committed grant changes (engine/adapters/notifications.py).
        install_change_notifications(factory, self.access_notifier.publish)
        return factory

    @cached_property
    def catalog(self) -> Catalog:
        return load_catalog(self.settings.catalog_path)

    @cached_property
    def fetch_pool(self) -> ThreadPoolExecutor:
        """Threads the sweep reads the provider on, several at once (its latency overlaps)."""
        return ThreadPoolExecutor(
            max_workers=max(1, self.settings.provider_fetch_concurrency), thread_name_prefix="provider-read"
        )

    @cached_property
    def reconcile_pool(self) -> ThreadPoolExecutor:
        """Threads a sweep batch reconciles changed customers on, each with its own database
        connection, so that one customer's round trips and commit overlap another's CPU work
        (two: the work is mostly Python, which runs one thread at a time)."""
        return ThreadPoolExecutor(max_workers=RECONCILE_OVERLAP, thread_name_prefix="reconcile")

    @cached_property
    def provider(self) -> RevenueCatClient:
        return RevenueCatClient(
            self.settings.revenuecat_api_url,
            self.settings.revenuecat_api_key,
            connect_timeout_s=self.settings.provider_connect_timeout_s,
            read_timeout_s=self.settings.provider_read_timeout_s,
        )

    @cached_property
    def redis(self):
        import redis

        return redis.Redis.from_url(redis_url(self.settings), socket_timeout=10, socket_connect_timeout=2)

    def _redis_client(self, *, socket_timeout: float | None):
        import redis

        return redis.Redis.from_url(redis_url(self.settings), socket_timeout=socket_timeout, socket_connect_timeout=2)

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
        return RateBudget(self.redis, self.settings.provider_rate_per_minute)

    @cached_property
    def metrics(self) -> Metrics:
        return Metrics(self.redis)

    def budgeted_provider(self, priority: Priority, *, max_wait_s: float) -> BudgetedProvider:
        """The provider client drawing on the shared rate budget at ``priority``."""
        return BudgetedProvider(self.provider, self.budget, priority, max_wait_s=max_wait_s)

    @cached_property
    def lms_budget(self) -> RateBudget:
        """The LMS's own request budget for JWT calls (its staff throttle), apart from the provider's."""
        return RateBudget(self.redis, self.settings.openedx_jwt_rate_per_minute, name="openedx")

    @cached_property
    def course_sink(self) -> CourseSink | None:
        """The LMS that course grants land in (Open edX), or None when it is not configured."""
        if not self.settings.openedx_enabled:
            return None
        s = self.settings
        return OpenEdxSink(
            OpenEdxClient(
                s.openedx_lms_url,
                client_id=s.openedx_client_id,
                client_secret=s.openedx_client_secret,
                api_key=s.openedx_api_key,
                budget=self.lms_budget,
                budget_wait_s=s.openedx_budget_wait_s,
                connect_timeout_s=s.provider_connect_timeout_s,
                read_timeout_s=s.provider_read_timeout_s,
            )
        )

    @cached_property
    def policy(self) -> ReconcilePolicy:
        return ReconcilePolicy(
            grant_sandbox=self.settings.grant_sandbox, max_staleness_ms=self.settings.max_staleness_s * 1000
        )

    def event_processing(self) -> EventProcessing:
        # Events wait a little for budget (they come before the sweep), then retry later.
        provider = self.budgeted_provider("event", max_wait_s=5.0)
        return EventProcessing(self.session_factory, provider, self.catalog, self.policy, wall_clock_ms)

    def close(self) -> None:
        if "provider" in self.__dict__:
            self.provider.close()
        if isinstance(self.__dict__.get("course_sink"), OpenEdxSink):
            self.__dict__["course_sink"].client.close()
        for pool in ("fetch_pool", "reconcile_pool"):
            if pool in self.__dict__:
                self.__dict__[pool].shutdown(wait=True)
        if "access_watch" in self.__dict__:
            self.access_watch.stop()
        if "access_notifier" in self.__dict__:
            self.access_notifier.close()
        if "db" in self.__dict__:
            self.db.dispose()
        if "redis" in self.__dict__:
            self.redis.close()


_runtimes: dict[tuple[int, Settings], Runtime] = {}


def runtime_for(settings: Settings) -> Runtime:
    """This process's Runtime for ``settings`` (a forked child gets its own)."""
    key = (os.getpid(), settings)
    rt = _runtimes.get(key)
    if rt is None:
        rt = _runtimes[key] = Runtime(settings)
    return rt
