"""web/gunicorn_conf.py: one listening socket per worker (SO_REUSEPORT) only where that is safe,
and kept across a HUP reload. The Procfile's web process end to end (connections spread, a HUP
reload still serving) is tests/client/test_gevent_server.py."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest
from gunicorn.config import Config

from web import gunicorn_conf


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def started_with(binds: list[str], workers: int = 2) -> Config:
    cfg = Config()
    cfg.set("bind", binds)
    cfg.set("workers", workers)
    gunicorn_conf.on_starting(SimpleNamespace(cfg=cfg))
    return cfg


@pytest.fixture(autouse=True)
def no_handed_sockets(monkeypatch):
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    monkeypatch.delenv("GUNICORN_FD", raising=False)


def test_several_workers_on_free_tcp_ports_get_a_socket_each():
    assert started_with([f"127.0.0.1:{free_port()}"]).reuse_port is True
    assert started_with([f"127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"]).reuse_port is True


def test_one_worker_keeps_the_masters_socket():
    # nothing to spread, and while the one worker restarts the master's socket queues connections
    assert started_with([f"127.0.0.1:{free_port()}"], workers=1).reuse_port is False


def test_a_port_in_use_is_left_to_gunicorn_to_refuse():
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # even a leftover instance of ours
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # with reuse_port the master would bind nothing and the workers would join that socket
        assert started_with([f"127.0.0.1:{port}"]).reuse_port is False


@pytest.mark.parametrize("binds", [["unix:/run/engine.sock"], ["127.0.0.1:0"], ["fd://3"]])
def test_unix_paths_port_zero_and_inherited_sockets_stay_shared(binds):
    # a Unix path would be unlinked and re-bound by each worker (the last gets every connection);
    # port 0 would give each worker a port of its own
    assert started_with(binds).reuse_port is False


def test_any_unsafe_bind_keeps_them_all_shared():
    assert started_with([f"127.0.0.1:{free_port()}", "unix:/run/engine.sock"]).reuse_port is False


@pytest.mark.parametrize("variable", ["LISTEN_FDS", "GUNICORN_FD"])
def test_sockets_handed_over_by_systemd_or_a_usr2_upgrade_stay_shared(monkeypatch, variable):
    monkeypatch.setenv(variable, "1" if variable == "LISTEN_FDS" else "3")
    assert started_with([f"127.0.0.1:{free_port()}"]).reuse_port is False


def test_a_reload_keeps_the_mode_chosen_at_start():
    # the reload's fresh Config has reuse_port False; the master holds sockets only if shared
    for listeners, expected in (([], True), ([object()], False)):
        cfg = Config()
        gunicorn_conf.on_reload(SimpleNamespace(cfg=cfg, LISTENERS=listeners))
        assert cfg.reuse_port is expected
