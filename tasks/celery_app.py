"""The Celery application, built from the Settings (the worker and beat entry module is
tasks/worker.py). The tasks are declared at module level in tasks/inbox.py, sweep.py, lms.py,
grants.py and discovery.py, named by area, and registered with every app built here."""

from __future__ import annotations

from celery import Celery

# Imported for their task declarations (shared tasks join every app created afterwards).
import tasks.discovery
import tasks.grants
import tasks.inbox
import tasks.lms
import tasks.sweep  # noqa: F401
from adapters.embedded_redis import broker_url
from config.settings import Settings
from services.wiring import discovery_tick_s
from tasks.names import (
    DISCOVERY_RUN,
    GRANTS_EXPIRE,
    INBOX_REDRIVE,
    LMS_DRAIN,
    SWEEP_QUEUE,
    SWEEP_RECONCILE_BATCH,
    SWEEP_RUN,
)


def create_celery(settings: Settings) -> Celery:
    """A Celery app whose reliability settings follow ../shared/reference/celery.md §7."""
    app = Celery("entitlements", set_as_current=False)
    url = broker_url(settings)
    transport_options = {
        # One visibility timeout everywhere (celery.md §1.3: set it in all three places);
        # every retry countdown stays below it so nothing is redelivered while it waits.
        "visibility_timeout": settings.visibility_timeout_s,
        "socket_connect_timeout": 2,
        "socket_timeout": 10,
        # Publishing gives up fast when the broker is down: the intake answers at once and the
        # inbox row waits for the redrive job instead of holding a web worker.
        "max_retries": 1,
        "interval_start": 0,
        "interval_step": 0.2,
        "interval_max": 0.2,
    }
    app.conf.update(
        broker_url=url,
        broker_transport_options=transport_options,
        result_backend=None,
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        visibility_timeout=settings.visibility_timeout_s,
        task_ignore_result=True,
        task_acks_late=True,  # tasks are idempotent: a crash mid-task re-runs it
        task_reject_on_worker_lost=True,  # a killed child requeues its message instead of acking it
        task_acks_on_failure_or_timeout=True,  # failures end in the inbox row + Sentry, not a loop
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_connection_retry_on_startup=True,
        task_time_limit=120,
        task_soft_time_limit=90,
        task_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        enable_utc=True,
        worker_hijack_root_logger=False,
        beat_schedule=beat_schedule(settings),
        beat_scheduler="tasks.beat:SingleBeatScheduler",
        beat_max_loop_interval=5,
        task_routes={SWEEP_RECONCILE_BATCH: {"queue": SWEEP_QUEUE}},
    )
    app.conf.engine_settings = settings
    return app


def beat_schedule(settings: Settings) -> dict[str, dict[str, object]]:
    """The beat schedule as data. Each entry expires before its next run would be due, so a
    backlog of beat messages never piles up behind a stopped worker."""
    redrive_every = float(max(15, settings.redrive_after_s // 2))
    sweep_every = float(settings.sweep_interval_s)
    expire_every = 60.0
    return {
        "redrive-inbox": {
            "task": INBOX_REDRIVE,
            "schedule": redrive_every,
            "options": {"expires": redrive_every},
        },
        "sweep": {"task": SWEEP_RUN, "schedule": sweep_every, "options": {"expires": sweep_every}},
        "expire-grants": {
            "task": GRANTS_EXPIRE,
            "schedule": expire_every,
            "options": {"expires": expire_every},
        },
        # Discovery needs REST API v2 (the customer list); a run works on the open pass.
        **(
            {
                "discovery": {
                    "task": DISCOVERY_RUN,
                    "schedule": float(discovery_tick_s(settings)),
                    "options": {"expires": float(discovery_tick_s(settings))},
                }
            }
            if settings.revenuecat_v2_enabled
            else {}
        ),
        # LMS changes are also drained right after each event; this is the net under that.
        **(
            {
                "drain-sink-outbox": {
                    "task": LMS_DRAIN,
                    "schedule": float(settings.sink_drain_interval_s),
                    "options": {"expires": float(settings.sink_drain_interval_s)},
                }
            }
            if settings.openedx_enabled
            else {}
        ),
    }


def default_app() -> Celery:
    return create_celery(Settings.from_env())
