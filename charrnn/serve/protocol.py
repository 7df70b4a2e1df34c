"""uvicorn's C HTTP protocol (httptools) with each connection bounded in size and time.

uvicorn's other parser (h11) refuses a request line and headers over a set size; with
httptools it keeps whatever arrives until the head is complete, so one client sending
endless headers (or one endless header) grows the server's memory without bound. Neither
parser limits how long a head may take, so a client can hold connections open for ever by
sending nothing, or a byte now and then (slowloris), until the process runs out of them.

This protocol counts the bytes of each request's head as they arrive and answers 431 once
they pass MAX_HEAD_BYTES (a head still open after a read, by the bytes read; a complete one,
by its request line and headers, however the reads cut them), and 408 when a head is not
complete HEAD_SECONDS after the connection opened or the previous response ended; either way
with the API's JSON error, closing the connection (after the answer to a pipelined request
before it). Bytes the parser cannot read get the API's JSON 400 too. A body the app did not
wait for (it answered 401, 404 or 413 first) must also end within HEAD_SECONDS of that
answer, or the connection is closed. Memory per connection stays within the bound plus one
socket read.

A client that stops reading a response (a stream it asked for) is cut off once its writes
have been stalled WRITE_STALL_SECONDS: the text generated meanwhile would otherwise be kept
for it as long as it held the connection, and its request would run on.

Imported only where httptools is installed (server.py falls back to h11 otherwise).
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from charrnn.serve.app import HEAD_SECONDS, MAX_HEAD_BYTES, WRITE_STALL_SECONDS, error_body


def refusal(status: str, kind: str, message: str) -> bytes:
    """A whole HTTP response carrying the API's JSON error about the headers."""
    body = json.dumps(error_body(kind, [("headers", message)]))  # ASCII: len() counts bytes
    return (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n{body}").encode()


HEAD_TOO_LARGE = refusal(
    "431 Request Header Fields Too Large", "headers_too_large",
    f"headers: the request line and headers are over {MAX_HEAD_BYTES // 1024} KiB; send "
    "fewer or shorter headers")
INVALID_REQUEST = refusal(
    "400 Bad Request", "invalid_http",
    "headers: not a valid HTTP/1.1 request (its request line, a header, Content-Length or a "
    "chunk's size); send a well-formed request")
HEAD_TOO_SLOW = refusal(
    "408 Request Timeout", "request_timeout",
    f"headers: the request line and headers did not arrive within {HEAD_SECONDS:g} s; "
    "send the whole request at once")


class HeadTooLarge(Exception):
    """Raised in the parser's callback: the parser stops, and the request is refused."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol refusing a request whose head passes MAX_HEAD_BYTES or
    `head_seconds`."""

    head_seconds = HEAD_SECONDS  # class attributes, so that a test can shorten them
    write_stall_seconds = WRITE_STALL_SECONDS

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._in_head = True  # reading a request's line and headers (or waiting for one)
        self._head_bytes = 0  # bytes read since the head began (body bytes of its read too)
        self._head_size = 0  # the request line's and headers' own bytes, as parsed
        self._clock: asyncio.TimerHandle | None = None
        self._stalled: asyncio.TimerHandle | None = None  # set while writes are paused
        self._closing: asyncio.TimerHandle | None = None  # set once closed with data unsent
        self._refusal: bytes | None = None  # sent once the answer being written is complete

    def connection_made(self, transport) -> None:  # noqa: ANN001 - uvicorn's signature
        super().connection_made(transport)
        self._start_clock()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_clock()
        self._writes_flowing()
        if self._closing is not None:
            self._closing.cancel()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:  # the websocket protocol takes over
        self._stop_clock()  # (SiteGuard closes it: the API has none)
        self._writes_flowing()
        super().handle_websocket_upgrade()

    def pause_writing(self) -> None:  # the client's socket is full: it is not reading
        super().pause_writing()
        if self._stalled is None:
            self._stalled = self.loop.call_later(self.write_stall_seconds,
                                                 self.transport.abort)

    def resume_writing(self) -> None:
        self._writes_flowing()
        super().resume_writing()

    def _writes_flowing(self) -> None:
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None

    def data_received(self, data: bytes) -> None:
        if self._in_head:  # an endless head is refused by what was read (the parser keeps it)
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > MAX_HEAD_BYTES:
            self._refuse(HEAD_TOO_LARGE)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._head_size += len(url) + 16  # the method, version and line end, about

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._head_size += len(name) + len(value) + 4  # ": " and the line end

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_clock()
        if self._head_size > MAX_HEAD_BYTES:  # whole within one read (or after blank lines,
            raise HeadTooLarge  # or a pipelined request's): the app never sees it
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:  # the parser stopped: the API's JSON error
        too_large = self._head_size > MAX_HEAD_BYTES  # rather than uvicorn's plain text
        self._refuse(HEAD_TOO_LARGE if too_large else INVALID_REQUEST)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True  # the next request on this connection starts its own count
        self._head_bytes = 0
        self._stop_clock()  # a body answered early has ended
        if self.cycle is not None and self.cycle.response_complete:  # answered early: the
            self._start_clock()  # next head is awaited from now

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._refusal is not None:  # a pipelined request refused while this was answered
            self._refuse(self._refusal)
            return
        if self._in_head:  # the next request's head is awaited now (uvicorn's keep-alive
            self._start_clock()  # timeout closes the connection sooner if it stays idle)
        elif self.cycle is not None and self.cycle.response_complete:
            # Answered before its body was read (401, 404, 413...): the rest of the body is
            # thrown away as it arrives, and may take no longer than a head would. (Otherwise
            # the body unread is a pipelined request's, which the app reads in its turn.)
            self._start_clock(self._body_too_slow)

    def _start_clock(self, then=None) -> None:  # noqa: ANN001 - a callback
        self._stop_clock()
        self._clock = self.loop.call_later(self.head_seconds, then or self._head_too_slow)

    def _body_too_slow(self) -> None:
        self._clock = None
        if not self._in_head:
            self._close()  # its answer has been sent already

    def _stop_clock(self) -> None:
        if self._clock is not None:
            self._clock.cancel()
            self._clock = None

    def _head_too_slow(self) -> None:
        self._clock = None
        # Only while no response is being written: a pipelined request waits for the one
        # before it, and its head is already complete.
        if self._in_head and (self.cycle is None or self.cycle.response_complete):
            self._refuse(HEAD_TOO_SLOW)

    def _refuse(self, response: bytes) -> None:
        if self.cycle is not None and not self.cycle.response_complete \
                and not self.cycle.more_body:
            # The request before it, whole, is still being answered (pipelined): refuse after
            # that one's answer. (A request whose own body is bad is refused at once.)
            self._refusal = response
            self.flow.pause_reading()
            return
        self._refusal = None
        if not self.transport.is_closing():
            self.transport.write(response)
        self._close()

    def _close(self) -> None:
        """Close once what is written has been sent, or abort if the client has not taken it
        within `write_stall_seconds` (a close waits for that for ever; so does uvicorn's own,
        after its keep-alive timeout, which then ends here at the head's time)."""
        if self.transport.is_closing() and self._closing is None:
            self.transport.abort()  # closed by uvicorn long enough ago: still not drained
            return
        self.transport.close()
        if self._closing is None:
            self._closing = self.loop.call_later(self.write_stall_seconds, self.transport.abort)
