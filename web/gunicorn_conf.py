"""gunicorn settings of the web process (the Procfile passes ``-c python:web.gunicorn_conf``;
command-line options still win)."""

from __future__ import annotations

import gc
import logging
import os
import socket
import sys

from gunicorn.glogging import Logger

from config.logs import configure_logging
from services.startup import StartupError, check_deployment, settings_from_env
from web.greenlets import serve_requests, wait_until_idle


class EngineLogger(Logger):
    """gunicorn's logger, set up first thing in the master: the process's own logging (stdout,
    text or JSON, secrets redacted), gunicorn's error and access lines written through it, and
    the start-up checks (services/startup.py), which stop the master with one line."""

    _checked = False

    def setup(self, cfg) -> None:
        super().setup(cfg)
        try:
            settings = settings_from_env()
            configure_logging(settings, process="web")
            if not EngineLogger._checked:  # at start, not again on a HUP reload
                check_deployment(settings, "web")
                EngineLogger._checked = True
        except StartupError as exc:
            sys.exit(f"web: {exc}")
        for log in (self.error_log, self.access_log):
            for handler in list(log.handlers):
                # gunicorn's own stream handlers ("-"); files and syslog an operator asked for stay
                if getattr(handler, "_gunicorn", False) and type(handler) is logging.StreamHandler:
                    log.removeHandler(handler)
            log.propagate = True


logger_class = EngineLogger


def on_starting(server) -> None:
    """Before the master opens any socket: have each worker listen on its own (SO_REUSEPORT),
    so that the kernel spreads new connections over the workers, when that is safe.

    With the one socket shared by all workers (gunicorn's default), whichever gevent worker woke
    first took most of a burst of connections (bench/intake.py prints the split). The crowded
    worker was saturated while the other idled, since an intake request spends most of its time
    waiting for its commit and a few connections cannot keep a worker busy; the intake's
    throughput followed the split.

    Only with several workers (one gains nothing, and while it restarts nobody would listen),
    only on TCP binds to a fixed port that is free now (on a Unix socket path each worker would
    unlink and re-bind the path and the last one would get every connection; port 0 would give
    each worker its own port; a port in use, even by a leftover instance with SO_REUSEPORT, must
    stop the master as it does without this), and not when sockets are handed over (systemd
    activation; a master re-executed by USR2 is handed the old master's sockets, and with
    SO_REUSEPORT there are none: restart the process instead). A worker that exits closes its
    socket, and connections still in that socket's accept queue are reset unless
    net.ipv4.tcp_migrate_req=1 (Linux 5.14+); RevenueCat retries those webhooks."""
    cfg = server.cfg
    handed_sockets = "LISTEN_FDS" in os.environ or "GUNICORN_FD" in os.environ
    if cfg.workers > 1 and not handed_sockets and spread_connections_safely(cfg.bind):
        cfg.set("reuse_port", True)


def on_reload(server) -> None:
    """A HUP reload reads the configuration again (``reuse_port`` back to its default) but
    keeps the master's sockets, of which there are none when each worker has its own: keep the
    mode chosen at start, or the new workers would listen nowhere."""
    server.cfg.set("reuse_port", not server.LISTENERS)


def spread_connections_safely(binds: list[str]) -> bool:
    """Every bind is a TCP address with a fixed port that nothing listens on now."""
    if not binds or any(b.startswith(("unix:", "fd://")) for b in binds):
        return False
    return all(_free_tcp_port(b) for b in binds)


def _free_tcp_port(bind: str) -> bool:
    from gunicorn.util import parse_address

    host, port = parse_address(bind)
    if not port:
        return False
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return False  # let gunicorn report the address
    for family, kind, proto, _name, address in infos:
        with socket.socket(family, kind, proto) as probe:
            # as gunicorn binds (SO_REUSEADDR, no SO_REUSEPORT): fails if anything listens there
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError:
                return False
    return True


YIELD_MAX_S = 0.005
_yield_between_requests = False  # set in each gevent worker by post_worker_init


def pre_request(worker, req) -> None:
    """Under gevent, before each request: let what else is waiting in the worker run first,
    until its event loop has nothing else to do, YIELD_MAX_S at most.

    gevent runs a greenlet until it would block, and a kept-alive connection whose next request
    has already arrived never blocks: its greenlet went on serving it while the rest of the
    worker waited, and a /healthz flood on kept-alive connections held webhooks for seconds
    (their commits and answers were ready, never run). Waiting for the loop to be idle, rather
    than a bare gevent.sleep(0), also lets I/O that has completed (a commit, a publish) be
    handled first (tests/client/test_gevent_server.py: a webhook answered while a flood runs)."""
    if _yield_between_requests:
        wait_until_idle(YIELD_MAX_S)


def post_worker_init(worker) -> None:
    """Once the worker has loaded the app: move everything allocated so far (Flask, SQLAlchemy,
    Celery, kombu, the app) out of the garbage collector's reach.

    They live as long as the worker, yet every full collection walked them all, tens of
    milliseconds in which the worker, and each request it holds (a gevent worker holds many),
    stood still, a few times a minute under load. After the freeze a full collection walks only
    what requests left behind. Collected first, so that no garbage from
    start-up is kept for the worker's life. Under gevent, also turns on pre_request's yield."""
    global _yield_between_requests  # noqa: PLW0603 - once per process
    _yield_between_requests = serve_requests()
    gc.collect()
    gc.freeze()
