"""What every process checks before it starts work, each failure as one line for an operator.

* The environment parses (config.settings.ConfigError).
* The catalog loads and validates: a typo stops the process at start, not at the first event.
* The Procfile's processes (web, worker, beat) refuse the embedded stand-ins (a SQLite
  database, an embedded redis-server) unless ALLOW_EMBEDDED=1: a deployment that forgot
  DATABASE_URL must fail loudly, not run one SQLite file per host.
"""

from __future__ import annotations

from collections.abc import Mapping

from config.settings import ConfigError, Settings
from engine.catalog import Catalog, load_catalog
from engine.errors import CatalogError


class StartupError(Exception):
    """The process must not start; the message is one line saying why and what to do."""


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings.from_env, with a bad value reported as a StartupError."""
    try:
        return Settings.from_env(environ)
    except ConfigError as exc:
        raise StartupError(str(exc)) from None


def check_catalog(settings: Settings) -> Catalog:
    """The catalog, loaded and validated; StartupError naming every problem on one line."""
    try:
        return load_catalog(settings.catalog_path)
    except CatalogError as exc:
        raise StartupError(catalog_problem(settings, exc)) from None


def catalog_problem(settings: Settings, exc: CatalogError) -> str:
    return f"catalog {settings.catalog_path} is invalid: " + "; ".join(p.replace("\n", " ") for p in exc.problems)


def check_deployment(settings: Settings, process: str) -> None:
    """Refuse the embedded stand-ins in a deployed process unless ALLOW_EMBEDDED is set; then
    check the catalog."""
    stand_ins = settings.embedded_stand_ins()
    if stand_ins and not settings.allow_embedded:
        raise StartupError(
            f"refusing to start {process} on {' and '.join(stand_ins)}: set DATABASE_URL and REDIS_URL "
            "(or ALLOW_EMBEDDED=1 to run on the embedded stand-ins, one machine only)"
        )
    check_catalog(settings)
