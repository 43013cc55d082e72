"""Runtime: the adapters one process needs (DB engine, provider client, catalog), built once
per process from the Settings, and rebuilt after a fork (SQLAlchemy engines must not cross one)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from functools import cached_property

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from engine.adapters.database import make_engine, make_session_factory
from engine.adapters.embedded_redis import redis_url
from engine.adapters.inbox import EventProcessing
from engine.adapters.metrics import Metrics
from engine.adapters.rate_budget import BudgetedProvider, Priority, RateBudget
from engine.adapters.revenuecat_client import RevenueCatClient
from engine.catalog import Catalog, load_catalog
from engine.reconcile import ReconcilePolicy


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
        return make_session_factory(self.db)

    @cached_property
    def catalog(self) -> Catalog:
        return load_catalog(self.settings.catalog_path)

    @cached_property
    def provider(self) -> RevenueCatClient:
        return RevenueCatClient(
            self.settings.revenuecat_api_url,
            self.settings.revenuecat_api_key,
            connect_timeout_s=self.settings.provider_connect_timeout_s,
            read_timeout_s=self.settings.provider_read_timeout_s,
        )

    @cached_property
    def redis(self):  # noqa: ANN201 - redis.Redis
        import redis

        return redis.Redis.from_url(redis_url(self.settings), socket_timeout=10, socket_connect_timeout=2)

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
    def policy(self) -> ReconcilePolicy:
        return ReconcilePolicy(grant_sandbox=self.settings.grant_sandbox, max_staleness_ms=self.settings.max_staleness_s * 1000)

    def event_processing(self) -> EventProcessing:
        # Events wait a little for budget (they come before the sweep), then retry later.
        provider = self.budgeted_provider("event", max_wait_s=5.0)
        return EventProcessing(self.session_factory, provider, self.catalog, self.policy, wall_clock_ms)

    def close(self) -> None:
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
