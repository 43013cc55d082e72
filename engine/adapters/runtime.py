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
from engine.adapters.inbox import EventProcessing
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
    def policy(self) -> ReconcilePolicy:
        return ReconcilePolicy(grant_sandbox=self.settings.grant_sandbox, max_staleness_ms=self.settings.max_staleness_s * 1000)

    def event_processing(self) -> EventProcessing:
        return EventProcessing(self.session_factory, self.provider, self.catalog, self.policy, wall_clock_ms)

    def close(self) -> None:
        if "db" in self.__dict__:
            self.db.dispose()


_runtimes: dict[tuple[int, Settings], Runtime] = {}


def runtime_for(settings: Settings) -> Runtime:
    """This process's Runtime for ``settings`` (a forked child gets its own)."""
    key = (os.getpid(), settings)
    rt = _runtimes.get(key)
    if rt is None:
        rt = _runtimes[key] = Runtime(settings)
    return rt
