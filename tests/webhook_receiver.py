"""A webhook receiver for the tests: a real HTTP server on 127.0.0.1 (an ephemeral port) in a thread,
recording every POST (its headers as sent, its raw body, when) and answering HTTP 500 to the first
`fail_first` of them (their deliveries are retried), 200 to the rest."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver(ThreadingHTTPServer):
    """Records every POST in `received` ({"headers", "body", "at"}); answers 500 to the first `fail_first`."""

    def __init__(self, fail_first: int = 0) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fail_first = fail_first
        self.lock = threading.Lock()
        self.received: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            self.server.received.append({"headers": dict(self.headers), "body": body, "at": time.monotonic()})
            failing = len(self.server.received) <= self.server.fail_first
        self.send_response(500 if failing else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def receiving(fail_first: int = 0) -> Iterator[Receiver]:
    """A Receiver serving for the block."""
    server = Receiver(fail_first)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
