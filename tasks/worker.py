"""Worker and beat entry module: ``celery -A tasks.worker worker`` / ``celery -A tasks.worker beat``."""

from celery.signals import worker_process_init

from config.observability import configure_logging, init_sentry
from config.settings import Settings
from services.wiring import wiring_for
from tasks.celery_app import create_celery

settings = Settings.from_env()
configure_logging()
init_sentry(settings, component="worker")
app = create_celery(settings)


@worker_process_init.connect
def _build_wiring_after_fork(**_: object) -> None:
    """Each prefork child builds its own wiring (engines and connections never cross a fork)."""
    wiring_for(settings).build()
