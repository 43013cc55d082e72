"""Worker and beat entry module: ``celery -A tasks.worker worker`` / ``celery -A tasks.worker beat``.

Before Celery starts: logging to stdout (text or JSON), Sentry, and the start-up checks
(services/startup.py), which stop the process with one line when the catalog or the
configuration is wrong. Each task's lines carry its task id and the key it was given.
"""

from __future__ import annotations

import sys
from typing import Any

from celery import Celery
from celery.signals import beat_init, celeryd_init, worker_process_init

from config.logs import configure_logging, install_celery_task_context, set_process_name
from config.observability import init_sentry
from services.startup import StartupError, check_deployment, settings_from_env
from services.wiring import wiring_for
from tasks.celery_app import create_celery
from tasks.names import INBOX_PROCESS, LMS_DRAIN

# The argument of each task that names what it works on, as a field of its log lines.
TASK_LOG_KEYS = {INBOX_PROCESS: "inbox_id", LMS_DRAIN: "customer_id"}


def _start() -> Celery:
    process = "beat" if "beat" in sys.argv[1:] else "worker"
    try:
        settings = settings_from_env()
        configure_logging(settings, process=process)
        init_sentry(settings, component=process)
        check_deployment(settings, process)
    except StartupError as exc:
        sys.exit(f"{process}: {exc}")
    install_celery_task_context(TASK_LOG_KEYS)
    return create_celery(settings)


@celeryd_init.connect
def _name_worker(**_kwargs: Any) -> None:
    set_process_name("worker")


@beat_init.connect
def _name_beat(**_kwargs: Any) -> None:
    set_process_name("beat")


@worker_process_init.connect
def _build_wiring_after_fork(**_kwargs: Any) -> None:
    """Each prefork child builds its own wiring (engines and connections never cross a fork)."""
    wiring_for(app.conf.engine_settings).build()


app = _start()
