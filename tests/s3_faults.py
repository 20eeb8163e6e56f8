"""A loopback HTTP proxy in front of the test S3 server that fails the requests a test names.

Retries are botocore's, inside the client, so they are tested the way they happen in production: a
real server answers 503 (or drops the connection) for chosen requests, and the proxy records every
request it saw, so a test can count what was sent again and what was not.
"""

from __future__ import annotations

import http.client
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

DROP = 0  # a fault's status: close the connection without an answer

# Hop-by-hop headers (and those the proxy sets itself): never copied from one side to the other.
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "expect", "te", "upgrade",
        "content-length", "date", "server"}


@dataclass
class Fault:
    method: str
    contains: str  # a substring of the request's path and query
    times: int = 1
    status: int = 503  # or DROP
    code: str = "ServiceUnavailable"


class FaultyS3:
    """`with FaultyS3(upstream) as proxy:` then point the client at `proxy.url`; `proxy.fail(...)` arms a
    fault; `proxy.seen` lists (method, path and query, status answered or DROP) in arrival order."""

    def __init__(self, upstream: str):
        self._upstream = urlsplit(upstream)
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self.seen: list[tuple[str, str, int]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.proxy = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail(self, method: str, contains: str, *, times: int = 1, status: int = 503,
             code: str = "ServiceUnavailable") -> None:
        with self._lock:
            self._faults.append(Fault(method, contains, times, status, code))

    def requests(self, method: str, contains: str = "") -> list[tuple[str, str, int]]:
        with self._lock:
            return [r for r in self.seen if r[0] == method and contains in r[1]]

    def __enter__(self) -> FaultyS3:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.times > 0 and fault.method == method and fault.contains in path:
                    fault.times -= 1
                    return fault
        return None

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.seen.append((method, path, status))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and "100 Continue" for botocore's Expect header

    def _any(self) -> None:
        proxy: FaultyS3 = self.server.proxy  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        fault = proxy._take(self.command, self.path)
        if fault is not None and fault.status == DROP:
            proxy._record(self.command, self.path, DROP)
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault is not None:
            proxy._record(self.command, self.path, fault.status)
            error = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{fault.code}</Code>'
                     f"<Message>injected by the test proxy</Message></Error>").encode()
            self._answer(fault.status, [("Content-Type", "application/xml")], error, len(error))
            return
        upstream = http.client.HTTPConnection(proxy._upstream.hostname, proxy._upstream.port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            upstream.request(self.command, self.path, body=body if length else None, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            # A HEAD answer has no body but names the object's size, which the transfer manager reads.
            size = int(response.getheader("Content-Length") or 0) if self.command == "HEAD" else len(data)
            proxy._record(self.command, self.path, response.status)
            self._answer(response.status, [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP],
                         data, size)
        finally:
            upstream.close()

    def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes, size: int) -> None:
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
        pass
