"""A tiny local stand-in for Sentry's ingestion: accepts envelopes (and legacy store requests)
on loopback, answers 200, and counts them, so that a benchmark can run the engine with
``SENTRY_DSN`` set and nothing leaving the machine."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class SentryReceiver:
    """Serves in a daemon thread of this process; ``dsn`` is what SENTRY_DSN should be."""

    def __init__(self) -> None:
        self.envelopes = 0
        self.bytes = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # the SDK keeps its connection alive

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.rstrip("/").endswith(("/envelope", "/store")):
                    with receiver._lock:
                        receiver.envelopes += 1
                        receiver.bytes += len(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="sentry-receiver", daemon=True)

    @property
    def dsn(self) -> str:
        return f"http://bench-public-key@127.0.0.1:{self.port}/1"

    def __enter__(self) -> SentryReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
