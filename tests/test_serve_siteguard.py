"""Other web sites kept out of a server on this machine: cross-site requests and DNS
rebinding (charrnn/serve/siteguard.py), on its own and through real servers."""

from __future__ import annotations

import asyncio
import json
import signal

import httpx
import pytest

from charrnn.serve.siteguard import (
    SiteGuard,
    explicit_port,
    hostname,
    is_loopback_name,
    page_site,
)
from serving import ServerProcess, load, running_server


def answer(hosts: tuple | None, headers: dict[str, str]) -> tuple[int, dict | None]:
    """The status a request with these headers gets from SiteGuard (hosts allowed; None: any
    host, as beyond loopback), and the error if refused."""
    sent = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/generate",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(SiteGuard(app, hosts or (), any_host=hosts is None)(scope, receive, send))
    status = sent[0]["status"]
    return status, (json.loads(sent[1]["body"])["error"] if status != 200 else None)


def test_names_in_host_headers():
    assert hostname("127.0.0.1:8000") == "127.0.0.1"
    assert hostname("[::1]:8000") == hostname("[::1]") == "::1"
    assert hostname("Example.COM") == "example.com"
    assert all(map(is_loopback_name, ["localhost", "app.localhost", "127.0.0.1", "127.9.9.9",
                                      "::1"]))
    assert not any(map(is_loopback_name, ["evil.example", "localhost.evil.example",
                                          "10.0.0.1", "0.0.0.0", ""]))


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost", "[::1]:80", "a.localhost:9",
                                  "proxy.example", "PROXY.example:443", "localhost.:8000",
                                  "127.0.0.1.", "[::ffff:127.0.0.1]:80", "proxy.example."])
def test_loopback_names_and_allowed_hosts_are_answered(host):
    assert answer(("proxy.example",), {"host": host})[0] == 200


def test_another_name_on_loopback_is_refused_naming_the_option():
    """DNS rebinding: a site's own name, pointed at 127.0.0.1 by the site."""
    status, error = answer((), {"host": "rebind.evil.example:8000"})
    assert status == 403 and error["type"] == "forbidden_host"
    assert "--allow-host rebind.evil.example" in error["message"]


def test_two_host_headers_are_refused():
    """Which one counts would depend on who reads them (this guard or the app)."""
    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "headers": [(b"host", b"localhost"), (b"host", b"evil.example")]}
    asyncio.run(SiteGuard(None, ())(scope, None, send))
    assert sent[0]["status"] == 403 and b"more than one Host header" in sent[1]["body"]


def test_websockets_are_refused_before_the_app():
    sent = []

    async def receive():
        return {"type": "websocket.connect"}

    async def send(message):
        sent.append(message)

    asyncio.run(SiteGuard(None, any_host=True)({"type": "websocket", "headers": []}, receive,
                                                send))
    assert sent == [{"type": "websocket.close", "code": 1008}]


def test_beyond_loopback_any_name_is_answered():
    assert answer(None, {"host": "my-box.lan:8000"})[0] == 200


@pytest.mark.parametrize("hosts", [(), None])
def test_a_page_of_another_site_is_refused(hosts):
    status, error = answer(hosts, {"host": "127.0.0.1:8000", "origin": "https://evil.example"})
    assert status == 403 and error["type"] == "cross_origin"
    assert "https://evil.example" in error["message"]
    assert answer(hosts, {"host": "127.0.0.1:8000", "origin": "null"})[0] == 403


@pytest.mark.parametrize("origin", ["http://[::1", "http://[::1]x:80", "http://[fe80::1%25"])
def test_an_origin_that_is_not_a_url_is_refused_not_a_server_error(origin):
    status, error = answer((), {"host": "127.0.0.1:8000", "origin": origin})
    assert status == 403 and error["type"] == "cross_origin"
    assert answer((), {"origin": origin})[0] == 403  # no Host either


def test_ports_in_host_headers_and_origins():
    assert explicit_port("localhost:8000") == explicit_port("[::1]:8000") == 8000
    assert explicit_port("localhost") is explicit_port("[::1]") is explicit_port("a:") is None
    assert explicit_port("a:\u0668") is None  # a digit, but not an ASCII one
    assert page_site("http://localhost:3000") == ("localhost", 3000)
    assert page_site("https://Chat.Example.") == ("chat.example", 443)
    assert page_site("http://[::1]") == ("::1", 80)
    assert page_site("null") is page_site("http://[::1") is page_site("file://") is None


@pytest.mark.parametrize("origin", ["http://localhost:3000", "http://localhost",
                                    "https://localhost"])
def test_a_page_on_another_port_of_the_same_name_is_refused(origin):
    """Another program's page on localhost is another site."""
    status, error = answer((), {"host": "localhost:8000", "origin": origin})
    assert status == 403 and error["type"] == "cross_origin"
    assert "localhost:8000" in error["message"]


def test_the_servers_own_page_and_programs_without_an_origin_are_answered():
    assert answer((), {"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:8000"})[0] == 200
    assert answer((), {"host": "localhost:8000"})[0] == 200
    assert answer((), {"host": "[::1]:8000", "origin": "http://[::1]:8000"})[0] == 200
    assert answer((), {"host": "localhost", "origin": "http://localhost"})[0] == 200
    # Behind a TLS proxy passing on the bare name the port differs: the name is what counts.
    assert answer(("chat.example",), {"host": "chat.example",
                                      "origin": "https://chat.example"})[0] == 200
    assert answer((), {"host": "localhost", "origin": "https://localhost:8443"})[0] == 200
    # A name given with --allow-host is trusted on any port.
    assert answer(("chat.example",), {"host": "chat.example:8000",
                                      "origin": "https://chat.example"})[0] == 200
    # A proxy passing on its own address as Host: the page's name is an --allow-host.
    assert answer(("chat.example",), {"host": "127.0.0.1:8000",
                                      "origin": "https://chat.example"})[0] == 200
    assert answer(None, {"host": "10.0.0.5:8000", "origin": "http://10.0.0.5:8000"})[0] == 200


def test_a_real_server_refuses_rebinding_and_other_sites(tiny_run):
    with running_server(load(tiny_run)) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/v1/models", headers={"Host": "evil.example"}).status_code == 403
        refused = client.post("/v1/generate", json={"length": 5},
                              headers={"Origin": "http://evil.example"})
        assert refused.status_code == 403 and refused.json()["error"]["field"] == "headers"
        another_port = client.post("/v1/generate", json={"length": 5},
                                   headers={"Origin": "http://127.0.0.1:1"})
        assert another_port.status_code == 403
        assert client.post("/v1/generate", json={"length": 5},
                           headers={"Origin": url}).json()["usage"]["generated_chars"] == 5


def test_the_command_lines_allow_host_reaches_the_server(tiny_run):
    server = ServerProcess("-k", str(tiny_run), "--device", "cpu", "--threads", "1",
                           "--allow-host", "charrnn.proxy.example")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert client.get("/healthz",
                              headers={"Host": "charrnn.proxy.example"}).status_code == 200
            assert client.get("/healthz", headers={"Host": "other.example"}).status_code == 403
    finally:
        server.process.send_signal(signal.SIGTERM)
        status, _, err = server.wait(timeout=30)
    assert status == 0, err
