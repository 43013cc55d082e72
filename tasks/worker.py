"""Worker entry module: ``celery -A tasks.worker worker`` / ``celery -A tasks.worker beat``."""

from tasks.celery_app import default_app

app = default_app()
