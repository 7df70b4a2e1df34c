"""Keeping other web sites out of a server on this machine.

A page on any site the user visits can make the user's browser send requests to
http://127.0.0.1:8000; two kinds get through unless the server refuses them:

- Cross-site requests: a form or a "simple" fetch POSTs to the API without asking the server's
  permission first (the page cannot read the answer, but it spends the user's machine). A
  browser names the page's site in the Origin header; a request whose Origin is another
  host than the one it was sent to is refused (403). Command-line clients send no Origin.
- DNS rebinding: a site points its own name at 127.0.0.1, and its page then reads the
  server's answers as its own (the checkpoints' paths, the text). Such a request is sent to the
  site's name: a server listening on loopback answers only requests addressed to a loopback
  name (localhost, *.localhost, 127.x.x.x, [::1]) or to a name given with --allow-host (403
  otherwise). A server listening on another address has no such list: use --api-key there.

A page of the same name on another port (another program's page on localhost:3000) is
another site too: when the Host header names a port, an Origin of that name must have the
same one. A Host without a port is not compared (a TLS proxy passing on the bare name sees
the browser's https port 443 in Origin), nor is an Origin named by --allow-host (a proxy
passing on its own address as Host). Two Host headers are refused (which one counts would
depend on who reads them), and so are websockets: the API has none.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from urllib.parse import urlsplit

from charrnn.serve.app import error_response


def hostname(host_header: str) -> str:
    """The name in a Host header ('example.com:8000', '[::1]:80'), lowercased, without the
    final dot of a fully qualified name ('localhost.')."""
    if host_header.startswith("["):
        return host_header[1:].partition("]")[0].lower()
    name = host_header.rpartition(":")[0] if ":" in host_header else host_header
    return name.lower().rstrip(".")


def explicit_port(host_header: str) -> int | None:
    """The port a Host header names ('localhost:8000' -> 8000), None if it names none."""
    after = host_header.rpartition("]")[2] if host_header.startswith("[") else host_header
    port = after.rpartition(":")[2] if ":" in after else ""
    return int(port) if port.isascii() and port.isdigit() else None


DEFAULT_PORTS = {"http": 80, "https": 443}


def page_site(origin: str) -> tuple[str, int | None] | None:
    """The name and port of a page's Origin header ('http://localhost:3000'), the scheme's
    port if none is written; None if it is not a URL (an unclosed IPv6 bracket, 'null')."""
    try:
        parts = urlsplit(origin)
        name, port = (parts.hostname or "").rstrip("."), parts.port
    except ValueError:
        return None
    if not name:
        return None
    return name, port if port is not None else DEFAULT_PORTS.get(parts.scheme)


def is_loopback_name(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


class SiteGuard:
    """ASGI middleware refusing cross-site requests and, on loopback, other hosts' names."""

    def __init__(self, app, hosts: Collection[str] = (), any_host: bool = False):
        """`hosts`: names allowed besides loopback ones, as Host and as a page's Origin;
        `any_host`: every Host is answered (a server listening beyond loopback)."""
        self.app = app
        self.hosts = {h.lower().rstrip(".") for h in hosts}
        self.any_host = any_host

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "websocket":  # the API has none; refused before the app (and
            await receive()  # its API key check, which reads HTTP requests) sees it
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] == "http":
            problem = self._problem(scope["headers"])
            if problem is not None:
                await error_response(403, problem[0], [("headers", problem[1])])(
                    scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _problem(self, header_list: list[tuple[bytes, bytes]]) -> tuple[str, str] | None:
        hosts = [value for name, value in header_list if name == b"host"]
        if len(hosts) > 1:  # which one counts would depend on who reads them
            return "forbidden_host", "headers: more than one Host header; send one"
        headers = dict(header_list)
        host_header = hosts[0].decode("latin-1") if hosts else ""
        host = hostname(host_header)
        if not self.any_host and host and not is_loopback_name(host) and host not in self.hosts:
            return ("forbidden_host",
                    f"headers: this server answers to localhost names only, not {host!r} (a "
                    "web page may be reaching it through its own name: DNS rebinding); to "
                    f"serve it under that name, start it with --allow-host {host}")
        origin = headers.get(b"origin")
        if origin is not None and not self._own_page(page_site(origin.decode("latin-1")),
                                                     host, explicit_port(host_header)):
            return ("cross_origin",
                    f"headers: a page of {origin.decode('latin-1')!r} may not use this "
                    f"server ({host_header or 'no host'}); open the playground on this server, "
                    "or call the API from a program (which sends no Origin header)")
        return None

    def _own_page(self, page: tuple[str, int | None] | None, host: str,
                  port: int | None) -> bool:
        """Whether a page at `page` (name, port) is this server's own, reached as host:port."""
        if page is None:  # not a URL: no page of this server
            return False
        name, page_port = page
        # A proxy may pass on its own address as Host: its public name is an --allow-host.
        if name in self.hosts:
            return True
        return name == host and (port is None or page_port == port)
