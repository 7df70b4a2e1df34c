"""Running the app: bind the address, serve until SIGINT/SIGTERM, then stop cleanly.

On the first signal the listening socket closes, every engine ends its running and queued
requests at the next step (their clients get what was written, finish_reason "shutdown"), the
connections close, and `serve` returns: the command exits 0. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable, Collection, Iterator

import uvicorn

from charrnn.errors import UsageError
from charrnn.serve.app import MAX_HEAD_BYTES, create_app
from charrnn.serve.models import ServedModel
from charrnn.serve.siteguard import SiteGuard

GRACE_SECONDS = 10.0  # after a signal, connections still open this long are cut
# How long a thread may hold the GIL while another waits (Python's default: 5 ms). The engine
# thread lets go of it in every torch call and the event loop's thread in every socket call;
# a short interval gets each back its turn quickly, which on a busy 2-core machine raised
# batched throughput by about a third.
SWITCH_INTERVAL = 0.0005


class Server(uvicorn.Server):
    """uvicorn's server, telling the engines to end their streams when it stops."""

    def __init__(self, config: uvicorn.Config, on_stop: Callable[[], None]):
        super().__init__(config)
        self._on_stop = on_stop

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._on_stop()  # streams end at the next step, so their connections can close
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises the signal after a graceful stop, making the exit status 130/143;
        # a server asked to stop that stopped cleanly has done its job: exit 0.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free one); a clear error if it is taken."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"--host {host}: not an address of this machine ({exc.strerror})") \
            from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(f"port {port} on {host} is in use; choose another with --port") \
                from None
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def http_protocol() -> type | str:
    """uvicorn's C parser with each request's head bounded in size and time (protocol.py),
    or its h11 parser where httptools is not installed (bounded in size by
    `h11_max_incomplete_event_size`, not in time)."""
    try:
        from charrnn.serve.protocol import BoundedHttpToolsProtocol
    except ImportError:
        return "h11"
    return BoundedHttpToolsProtocol


class _QuietParserRefusals(logging.Filter):
    """uvicorn warns of every request its parser refuses: each gets the API's JSON 400
    (protocol.py), and a client sending many would fill the log, one line each."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "Invalid HTTP request received."


def make_server(models: dict[str, ServedModel], api_key: str | None = None,
                hosts: Collection[str] = (), any_host: bool = False) -> Server:
    """`hosts`: names it answers to besides loopback ones, `any_host`: answer every name (a
    server listening beyond loopback; see siteguard.py)."""
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietParserRefusals) for f in uvicorn_log.filters):
        uvicorn_log.addFilter(_QuietParserRefusals())
    api = create_app(models, api_key=api_key)
    api.state.stopping = asyncio.Event()  # this server's loop waits for it
    app = SiteGuard(api, hosts, any_host)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=GRACE_SECONDS, http=http_protocol(),
                            h11_max_incomplete_event_size=MAX_HEAD_BYTES)

    def stop_engines() -> None:
        api.state.stopping.set()  # requests still sending their body are answered 503
        for served in models.values():
            served.engine.shutdown()

    return Server(config, stop_engines)


def serve(models: dict[str, ServedModel], sock: socket.socket, api_key: str | None = None,
          allow_hosts: Collection[str] = ()) -> None:
    """Serve on a bound socket until a signal; the engines are closed on the way out.

    On a loopback address it answers requests sent to loopback names or to `allow_hosts`;
    pages of `allow_hosts` may use it wherever it listens."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    loopback = ipaddress.ip_address(sock.getsockname()[0]).is_loopback
    try:
        make_server(models, api_key, tuple(allow_hosts), any_host=not loopback).run(
            sockets=[sock])
    finally:
        sock.close()
        for served in models.values():
            served.engine.close()
