"""Small HTTP(S) servers on 127.0.0.1 that answer the way a hostile or broken registry would.

A server runs a test's ``app(request) -> Answer`` per request in its own thread and records
every request it got (method, path, headers), so a test can check where credentials went.
Bodies may be generators (endless, slow): the server writes them until the client hangs up.
Every server a test starts is stopped by it (use it as a context manager).
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

# Even an endless body ends: no test needs more than this, whatever the client does.
MAX_BODY_BYTES = 8 * 1024 * 1024 * 1024
MAX_SECONDS = 120


@dataclass
class Answer:
    status: int = 200
    headers: dict = field(default_factory=dict)
    body: bytes | Iterable[bytes] = b""
    raw: bytes | None = None  # written as is instead of a status line, headers and body


@dataclass
class Request:
    method: str
    path: str
    headers: dict


def endless(chunk: bytes = b"x" * 65536, delay: float = 0.0):
    """An endless body (bounded by MAX_BODY_BYTES / MAX_SECONDS for the test's sake)."""
    sent, started = 0, time.monotonic()
    while sent < MAX_BODY_BYTES and time.monotonic() - started < MAX_SECONDS:
        yield chunk
        sent += len(chunk)
        if delay:
            time.sleep(delay)


class HostileServer:
    def __init__(self, app: Callable[[Request], Answer], *, tls: tuple[Path, Path] | None = None,
                 host: str = "127.0.0.1") -> None:
        self.app = app
        self.tls = tls
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server = None
        self._thread = None
        self.host = host

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return "%s://%s:%d" % (scheme, self.host, self._server.server_address[1])

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> HostileServer:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self):
                request = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
                with outer._lock:
                    outer.requests.append(request)
                answer = outer.app(request)
                try:
                    if answer.raw is not None:
                        self.wfile.write(answer.raw)
                        self.close_connection = True
                        return
                    self.send_response(answer.status)
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    if isinstance(answer.body, bytes):
                        if not any(k.lower() == "content-length" for k in answer.headers):
                            self.send_header("Content-Length", str(len(answer.body)))
                        self.end_headers()
                        if self.command != "HEAD":
                            self.wfile.write(answer.body)
                    else:
                        self.close_connection = True
                        self.end_headers()
                        for chunk in answer.body:
                            self.wfile.write(chunk)
                            self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
                    self.close_connection = True

            do_GET = do_HEAD = _handle  # http.server dispatches on these names

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer((self.host, 0), Handler)
        self._server.daemon_threads = True
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = None

    def __enter__(self) -> HostileServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def authorizations(self) -> list[str]:
        with self._lock:
            return [r.headers["authorization"] for r in self.requests if "authorization" in r.headers]
