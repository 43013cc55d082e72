"""A local stand-in for Sentry's ingest endpoint, for processes started by a test (a worker):
their SDK sends real envelopes over HTTP to it, and nothing leaves the machine."""

from __future__ import annotations

import gzip
import itertools
import json
import threading
from typing import Any

from simulators.serving import ServedApp


class SentrySink:
    """Keeps the text of every envelope POSTed to ``/api/<project>/envelope/``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._envelopes: list[str] = []
        self._server = ServedApp(self._wsgi, name="sentry-sink")

    @property
    def dsn(self) -> str:
        return f"http://public@127.0.0.1:{self._server.port}/1"

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        data = environ["wsgi.input"].read(length)
        if environ.get("HTTP_CONTENT_ENCODING") == "gzip":
            data = gzip.decompress(data)
        with self._lock:
            self._envelopes.append(data.decode("utf-8", "replace"))
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]

    def text(self) -> str:
        with self._lock:
            return "\n".join(self._envelopes)

    def items(self, kind: str) -> list[dict[str, Any]]:
        """The payloads of the items of ``kind`` (event, check_in, ...) received so far: in an
        envelope each item's header line (with its type) precedes its JSON payload line."""
        lines = self.text().split("\n")
        found = []
        for header, payload in itertools.pairwise(lines):
            try:
                head, body = json.loads(header), json.loads(payload)
            except ValueError:
                continue
            if isinstance(head, dict) and head.get("type") == kind and isinstance(body, dict):
                found.append(body)
        return found

    def __enter__(self) -> SentrySink:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()
