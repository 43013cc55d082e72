"""Worker and beat entry module: ``celery -A tasks.worker worker`` / ``celery -A tasks.worker beat``."""

from config.observability import configure_logging, init_sentry
from config.settings import Settings
from tasks.celery_app import create_celery

settings = Settings.from_env()
configure_logging()
init_sentry(settings, component="worker")
app = create_celery(settings)
