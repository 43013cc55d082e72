"""ServedApp: a WSGI app on a real local port, served by werkzeug in a daemon thread.

The port is bound at construction (so the URL is known before ``start()``); ``stop()`` releases
it and ``start()`` binds the same port again, so a test can take a server down and back.
"""

from __future__ import annotations

import threading
from typing import Any, Self

from werkzeug.serving import WSGIRequestHandler, make_server


class ServedApp:
    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        name: str = "served-app",
        request_handler: type[WSGIRequestHandler] | None = None,
    ):
        self.app, self.host, self.name = app, host, name
        self.request_handler = request_handler  # werkzeug's own when None
        self._server: Any = make_server(host, port, app, threaded=True, request_handler=request_handler)
        self.port: int = self._server.server_port
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        """Serve in a daemon thread (again, on the same port, after ``stop()``)."""
        if self._thread is not None:
            return self
        if self._server is None:
            self._server = make_server(
                self.host, self.port, self.app, threaded=True, request_handler=self.request_handler
            )
        # A short poll interval keeps stop() fast (shutdown waits for the serve loop to notice).
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=self.name, daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self, poll_interval: float = 0.2) -> None:
        """Serve in the calling thread until interrupted, then release the port."""
        try:
            self._server.serve_forever(poll_interval=poll_interval)
        finally:
            self._server.server_close()
            self._server = None

    def stop(self) -> None:
        """Stop serving and release the port: connections are refused until ``start()``."""
        if self._server is None:
            return
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()
        self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
