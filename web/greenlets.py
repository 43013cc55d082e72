"""The gevent worker's event loop as the web process uses it (the Procfile's gunicorn gevent
workers). Light on purpose: gunicorn's master loads it with web/gunicorn_conf.py."""

from __future__ import annotations

import sys


def serve_requests() -> bool:
    """Requests are served by greenlets in this process: gevent has patched threads and sockets
    (gunicorn's gevent worker does before it loads the app)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("threading") and monkey.is_module_patched("socket")


def wait_until_idle(max_s: float) -> None:
    """Return once the event loop has nothing else to do (every greenlet that could run has
    run, completed I/O handled), or after ``max_s`` when it stays busy. gevent looks at its
    timers between rounds of callbacks, so a loop kept busy by callbacks alone can hold this up
    to its switch interval (5 ms); I/O events end each round."""
    import gevent

    with gevent.Timeout(max_s, False):  # False: the time running out is no error
        gevent.idle()
