"""gunicorn settings of the web process (the Procfile passes ``-c python:web.gunicorn_conf``;
command-line options still win)."""

from __future__ import annotations

import gc


def post_worker_init(worker) -> None:  # noqa: ANN001
    """Once the worker has loaded the app: move everything allocated so far (about 100k objects:
    Flask, SQLAlchemy, Celery, kombu, the app) out of the garbage collector's reach.

    They live as long as the worker, yet every full collection walked them all: about 80 ms in
    which the worker, and each request it holds (a gevent worker holds many), stood still,
    a few times a minute under load (measured: bench/intake.py). After the freeze a full
    collection walks only what requests left behind. Collected first, so that no garbage from
    start-up is kept for the worker's life."""
    gc.collect()
    gc.freeze()
