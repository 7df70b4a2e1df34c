"""uvicorn's C HTTP parser (httptools) with the request head bounded.

uvicorn's other parser (h11) refuses a request line and headers over a set size; with
httptools it keeps whatever arrives until the head is complete, so one client sending
endless headers (or one endless header) grows the server's memory without bound. This
protocol counts the bytes of each request's head as they arrive and answers 431 with the
API's JSON error, closing the connection, once they pass MAX_HEAD_BYTES. Memory per
connection stays within that plus one read from the socket.

Imported only where httptools is installed (server.py falls back to h11 otherwise).
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from charrnn.serve.app import MAX_HEAD_BYTES


def head_too_large_response() -> bytes:
    message = (f"headers: the request line and headers are over {MAX_HEAD_BYTES // 1024} KiB; "
               "send fewer or shorter headers")
    body = json.dumps({"error": {"type": "headers_too_large", "message": message,
                                 "field": "headers",
                                 "problems": [{"field": "headers", "message": message}]}})
    return (b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n"
            b"connection: close\r\n\r\n" + body.encode())


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol refusing a request whose head passes MAX_HEAD_BYTES."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._in_head = True  # reading a request's line and headers (or waiting for one)
        self._head_bytes = 0

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            # Counted before parsing, body bytes of the same read included: a head that ends
            # within this read is let through (it is at most one read over the bound), one
            # still open after it is refused.
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > MAX_HEAD_BYTES \
                and not self.transport.is_closing():
            self.transport.write(head_too_large_response())
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True  # the next request on this connection starts its own count
        self._head_bytes = 0
