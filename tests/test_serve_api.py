"""The HTTP API through a real uvicorn server on a loopback port, read by a real HTTP client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from typer.testing import CliRunner

from charrnn.cli import app
from serving import load, running_server, sse_events, wait_until

TIMEOUT = httpx.Timeout(30.0)
POST_HEAD = b"POST /v1/generate HTTP/1.1\r\nHost: localhost\r\n"  # for raw sockets
ENDLESS = 1_000_000  # characters: a request that runs until the test ends it, on any machine


@pytest.fixture(scope="module")
def server(tiny_run):
    """One server for the tests that leave it idle: (url, the served models)."""
    models = load(tiny_run, max_streams=64, max_queue=16, max_length=ENDLESS)
    with running_server(models) as url:
        yield url, models


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server[0], timeout=TIMEOUT) as client:
        yield client


def cli_samples(run, *args: str) -> list[dict]:
    """What `charrnn sample ... --format json` prints."""
    result = CliRunner().invoke(app, ["sample", "-k", str(run), "--format", "json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def streamed(client: httpx.Client, body: dict, **headers) -> list[tuple[str, dict]]:
    with client.stream("POST", "/v1/generate", json=body, headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(sse_events(response.iter_lines()))


def problems(response: httpx.Response) -> dict[str | None, str]:
    error = response.json()["error"]
    assert error["message"] and error["field"] == error["problems"][0]["field"]
    return {p["field"]: p["message"] for p in error["problems"]}


# ---- answers -----------------------------------------------------------------------------------
def test_models_health_and_docs(client):
    listed = client.get("/v1/models").json()
    (model,) = listed["models"]
    assert model["name"] == "run" and model["default"] is True
    assert {"cell", "num_layers", "hidden_size", "vocab_size", "best_val_loss"} <= set(model)
    assert listed["limits"]["max_length"] == ENDLESS
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/generate"]["post"]["requestBody"]
    assert "temperature" in body["content"]["application/json"]["schema"]["properties"]
    # The seed's bound as the integer it is (FastAPI's model made it 1.8446744073709552e+19).
    assert '"maximum":18446744073709551615' in client.get("/openapi.json").text
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize("path", ["/", "/docs", "/healthz", "/v1/models", "/static/app.js"])
def test_head_answers_as_get_without_a_body(server, client, path):
    """Sent on one connection, HEAD then GET: the HEAD answer is GET's head alone (an HTTP
    client would not show a body sent after it, so the bytes are read off the socket)."""
    got = client.get(path)
    with _connect(server[0]) as sock:
        sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                     f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                     .encode())
        received = _read_all(sock)
    head, _, rest = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert rest.startswith(b"HTTP/1.1 200 ")  # no body between the two answers
    assert f"content-type: {got.headers['content-type']}".encode() in head.lower()
    assert f"content-length: {len(got.content)}".encode() in head.lower()


def test_generate_returns_what_charrnn_sample_prints(client, tiny_run):
    answer = client.post("/v1/generate", json={
        "prime": "The ", "length": 150, "temperature": 0.7, "top_k": 10, "seed": 11,
        "num_samples": 2, "logprobs": True}).json()
    expected = cli_samples(tiny_run, "-p", "The ", "-n", "150", "-t", "0.7", "--top-k", "10",
                           "--seed", "11", "-N", "2")
    assert answer["model"] == "run"
    assert [s["text"] for s in answer["samples"]] == [s["text"] for s in expected]
    for mine, theirs in zip(answer["samples"], expected, strict=True):
        assert mine["logprobs"] == pytest.approx(theirs["logprobs"], abs=1e-4)
        assert mine["finish_reason"] == "length"
    assert answer["usage"] == {"prime_chars": 4, "generated_chars": 300}


def test_streamed_events_carry_the_text_then_the_same_summary(client):
    body = {"prime": "The ", "length": 400, "seed": 4, "stop": "\n", "logprobs": True}
    plain = client.post("/v1/generate", json=body).json()
    events = streamed(client, {**body, "stream": True})
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "done" and set(kinds[:-1]) == {"delta"}
    assert events[-1][1] == plain  # the final event is the non-streamed answer
    text = "".join(s["text"] for _, data in events[:-1] for s in data["samples"])
    assert text == plain["samples"][0]["text"]
    lps = [lp for _, data in events[:-1] for s in data["samples"] for lp in s["logprobs"]]
    assert lps == plain["samples"][0]["logprobs"]
    # Accept: text/event-stream alone also streams; an explicit "stream": false does not.
    assert streamed(client, body, accept="text/event-stream")[-1] == ("done", plain)
    answer = client.post("/v1/generate", json={**body, "stream": False},
                         headers={"accept": "text/event-stream"})
    assert answer.headers["content-type"] == "application/json" and answer.json() == plain


def test_a_seeded_request_does_not_depend_on_its_neighbours(server, tiny_run):
    """The same text as `charrnn sample`, alone and while 20 other requests stream."""
    url, _ = server
    target = {"prime": "How", "length": 300, "temperature": 0.9, "top_p": 0.95, "seed": 123}
    expected = cli_samples(tiny_run, "-p", "How", "-n", "300", "-t", "0.9", "--top-p", "0.95",
                           "--seed", "123")[0]["text"]

    async def crowd(neighbours: int) -> str:
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:
            async def one(body):
                async with client.stream("POST", "/v1/generate",
                                         json={**body, "stream": True}) as response:
                    lines = [line async for line in response.aiter_lines()]
                return list(sse_events(lines))[-1][1]["samples"][0]["text"]

            # Some neighbours' primes have the target's length: they are read in one call.
            others = [{"prime": ["The ", "Sph", ""][i % 3], "length": 200 + 10 * i,
                       "temperature": 0.5 + i / 20, "seed": i, "num_samples": 1 + i % 2}
                      for i in range(neighbours)]
            texts = await asyncio.gather(one(target), *(one(b) for b in others))
            return texts[0]

    assert asyncio.run(crowd(0)) == expected
    assert asyncio.run(crowd(20)) == expected


def test_beam_search_through_the_api_equals_the_cli(client, tiny_run):
    answer = client.post("/v1/generate", json={
        "prime": "The ", "length": 30, "beam": 4, "num_samples": 2, "logprobs": True}).json()
    expected = cli_samples(tiny_run, "-p", "The ", "-n", "30", "--beam", "4", "-N", "2")
    assert [s["text"] for s in answer["samples"]] == [s["text"] for s in expected]
    assert [s["logprobs"] for s in answer["samples"]] == [s["logprobs"] for s in expected]


# ---- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "field", "says"), [
    ({"temperature": "hot"}, "temperature", "valid number"),
    ({"temperature": -1}, "temperature", ">= 0"),
    ({"length": 2.5}, "length", "valid integer"),
    ({"length": -1}, "length", "greater than or equal to 0"),
    ({"length": ENDLESS + 1}, "length", "at most 1,000,000"),
    ({"top_p": 0}, "top_p", "(0, 1]"),
    ({"top_k": 0}, "top_k", "greater than or equal to 1"),
    ({"top_k": 500}, "top_k", "at most"),
    ({"num_samples": 65}, "num_samples", "at most 64"),
    ({"num_samples": True}, "num_samples", "valid integer"),
    ({"stop": ""}, "stop", "at least 1 character"),
    ({"prime": "caf\u00e9 \u2603"}, "prime", "'\u2603'"),
    ({"prime": "x" * 10_001}, "prime", "at most 10,000 characters"),
    ({"model": "nope"}, "model", "served: run"),
    ({"beam": 2, "temperature": 0.5}, "beam", "leave out temperature"),
    ({"beam": 2, "num_samples": 3}, "num_samples", "at most beam"),
    ({"beam": 0}, "beam", "from 1 to 32"),
    ({"seed": 2**70}, "seed", "less than or equal to"),
    ({"seed": -1}, "seed", "greater than or equal to 0"),  # as charrnn sample --seed
    ({"stream": "yes"}, "stream", "valid boolean"),
    ({"temprature": 1}, "temprature", "unknown field"),
])
def test_every_bad_field_is_a_4xx_naming_it(client, body, field, says):
    response = client.post("/v1/generate", json=body)
    assert response.status_code == 422
    found = problems(response)
    assert field in found and says in found[field], found


def test_several_problems_are_reported_together(client):
    """Wrong types and ranges, and what the model cannot do, all in one answer."""
    response = client.post("/v1/generate", json={"length": -1, "top_p": 5, "x": 1,
                                                 "prime": "\u2603", "top_k": 500})
    assert response.status_code == 422
    assert set(problems(response)) == {"length", "top_p", "x", "prime", "top_k"}


@pytest.mark.parametrize("content", [b'{"\\ud800": 1}', b'{"model": ["\\ud800"]}',
                                     b'{"stop": "\\ud800"}', b'{"prime": "a\\udfff"}'])
def test_lone_surrogates_are_named_escaped_not_a_server_error(client, content):
    """JSON may carry half a UTF-16 pair ("\\ud800"), which UTF-8 cannot write."""
    response = client.post("/v1/generate", content=content)
    assert response.status_code == 422
    assert "\\ud8" in response.text or "\\udf" in response.text


def test_an_error_about_a_huge_body_stays_small(client):
    """80,000 unknown fields, or a 900 KB model name: a few of them are named, the rest
    counted; the answer stays a few KB."""
    many = client.post("/v1/generate", json={f"k{i}": 0 for i in range(80_000)})
    assert many.status_code == 422 and len(many.content) < 4_000
    found = problems(many)
    assert "k0" in found and "79,995 more unknown fields" in found["body"]
    long_name = client.post("/v1/generate", json={"model": "m" * 900_000})
    assert long_name.status_code == 422 and len(long_name.content) < 4_000


@pytest.mark.parametrize(("content", "status", "says"), [
    (b'{"prime": ', 400, "not valid JSON"),
    (b"\xff\xfe", 400, "not valid JSON"),
    (b"[1, 2]", 400, "a JSON object is expected"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "nests too deeply"),
    (b'{"prime": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001, 400, "nests too deeply"),
    (b'{"seed": ' + b"9" * 5_000 + b"}", 400, "not valid JSON"),  # past Python's int digits
    (b'{"prime": "' + b"a" * (1 << 20) + b'"}', 413, "at most 1,048,576"),
])
def test_bodies_that_are_not_a_request(client, content, status, says):
    response = client.post("/v1/generate", content=content)
    assert response.status_code == status
    assert says in response.json()["error"]["message"]


def test_a_large_body_without_a_length_is_cut_off(client):
    def chunks():  # sent chunked: no Content-Length to refuse it by
        for _ in range(40):
            yield b" " * 65536

    response = client.post("/v1/generate", content=chunks())
    assert response.status_code == 413


def _raw_exchange(url: str, head: bytes, endless: bytes) -> bytes:
    """Send `head`, then `endless` over and over (at most 16 MB) until the server answers or
    closes; return what it answered."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        for _ in range((16 << 20) // len(endless)):
            try:
                answer = sock.recv(65536)
            except BlockingIOError:
                answer = None
            if answer is not None:
                break
            try:
                sock.send(endless)
            except BlockingIOError:
                time.sleep(0.001)
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.settimeout(30)
        received = answer or b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
    return received


@pytest.mark.parametrize(("head", "endless"), [
    (POST_HEAD, b"X-Pad: " + b"a" * 8000 + b"\r\n"),
    (POST_HEAD + b"X-Big: ", b"a" * 8000),  # one endless header
    (b"GET /v1/models?q=", b"a" * 8000),  # an endless URL
], ids=["many headers", "one header", "url"])
def test_an_endless_request_head_is_refused_and_the_server_keeps_serving(server, client,
                                                                         head, endless):
    from charrnn.serve.app import MAX_HEAD_BYTES

    answer = _raw_exchange(server[0], head, endless)
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 431 Request Header Fields Too Large"
    error = json.loads(rest.partition(b"\r\n\r\n")[2])["error"]
    assert error["field"] == "headers" and f"{MAX_HEAD_BYTES // 1024} KiB" in error["message"]
    # Heads within the bound still work, on kept-alive connections too.
    cookie = {"Cookie": "c" * 20_000}
    for _ in range(2):
        response = client.post("/v1/generate", json={"length": 5}, headers=cookie)
        assert response.status_code == 200 and response.json()["usage"]["generated_chars"] == 5


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=30)


def _read_all(sock: socket.socket) -> bytes:
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return received


@pytest.fixture
def short_timeouts(monkeypatch):
    """Heads and bodies must arrive within 0.5 s."""
    from charrnn.serve import app as app_module
    from charrnn.serve.protocol import BoundedHttpToolsProtocol

    monkeypatch.setattr(BoundedHttpToolsProtocol, "head_seconds", 0.5)
    monkeypatch.setattr(app_module, "BODY_SECONDS", 0.5)


@pytest.mark.parametrize("head", [
    b"Content-Length: -1\r\n\r\n",
    b"Content-Length: 1e3\r\n\r\n",
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
], ids=["negative length", "float length", "length and chunked", "bad chunk size"])
def test_a_request_that_is_not_http_gets_a_json_400(server, client, head, caplog):
    with _connect(server[0]) as sock:
        sock.sendall(POST_HEAD + head)
        answer = _read_all(sock)
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 400 Bad Request"
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["error"]["type"] == "invalid_http"
    assert client.get("/healthz").status_code == 200
    assert not caplog.records  # not a line in the log per refused request


def test_a_head_over_the_bound_is_refused_even_when_it_arrives_at_once(server):
    """The bound is the head's own bytes, however the socket cuts them: 100,000 bytes of
    header sent in one piece get 431 (they were let through when one read held the whole
    head), while a head under the bound followed at once by a large body is answered."""
    from charrnn.serve.app import MAX_HEAD_BYTES

    def exchange(data: bytes) -> bytes:
        with _connect(server[0]) as sock:
            sock.sendall(data)
            return _read_all(sock)

    big_head = POST_HEAD + b"X-Big: " + b"a" * 100_000 + b"\r\nConnection: close\r\n\r\n"
    assert exchange(big_head).startswith(b"HTTP/1.1 431 ")
    assert exchange(b"\r\n\r\n" + big_head).startswith(b"HTTP/1.1 431 ")  # blank lines first
    small = POST_HEAD + b"Content-Length: 2\r\n\r\n{}"
    pipelined = exchange(small + big_head)  # the first is answered, the second refused
    assert pipelined.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 431 " in pipelined
    body = json.dumps({"length": 3, "prime": "a" * 200_000}).encode()
    padded = POST_HEAD + b"X-Pad: " + b"p" * (MAX_HEAD_BYTES - 1_000) + b"\r\n"
    answer = exchange(padded + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
                      + body)
    assert answer.startswith(b"HTTP/1.1 422 "), answer[:200]  # the prime's length, not 431
    assert b"prime" in answer


@pytest.mark.parametrize(("sent", "drip"), [
    (b"", b""), (POST_HEAD + b"X-A: b", b"b")],
    ids=["nothing", "a dripping head"])
def test_a_head_that_does_not_arrive_in_time_is_refused(server, short_timeouts, sent, drip):
    """A silent or slowly dripping client (slowloris) does not hold its connection."""
    with _connect(server[0]) as sock:
        sock.sendall(sent)
        started = time.monotonic()
        for _ in range(20):  # a byte every 0.1 s: never a whole head
            with contextlib.suppress(OSError):
                sock.send(drip)
            time.sleep(0.1)
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer[:100]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["field"] == "headers"
    assert time.monotonic() - started < 10


def test_a_body_that_does_not_arrive_in_time_is_refused(server, short_timeouts):
    with _connect(server[0]) as sock:
        sock.sendall(POST_HEAD + b"Content-Type: application/json"
                     b"\r\nContent-Length: 100\r\n\r\n{\"length\": ")
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer[:100]
    error = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
    assert error["field"] == "body" and "11 bytes arrived" in error["message"]


def test_the_app_alone_answers_on_any_event_loop(tiny_run):
    """A library user's app (no server around it) may be called from several event loops,
    here one per request, each body arriving a little after its head."""
    from charrnn.serve.app import create_app

    models = load(tiny_run)
    app = create_app(models)

    async def body() -> AsyncIterator[bytes]:
        await asyncio.sleep(0.05)
        yield b'{"length": 3, "seed": 1}'

    async def post() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://localhost") as client:
            return await client.post("/v1/generate", content=body())

    try:
        for _ in range(2):
            answer = asyncio.run(post())
            assert answer.status_code == 200, answer.text
    finally:
        for served in models.values():
            served.engine.close()


def test_a_client_that_leaves_mid_body_is_not_a_server_error(tiny_run):
    """Half a body, then the connection closes: nothing to answer, and nothing logged as an
    error (it logged a traceback per connection)."""
    with running_server(load(tiny_run)) as url:  # fails if the server logged an error
        with _connect(url) as sock:
            sock.sendall(POST_HEAD + b"Content-Length: 100\r\nExpect: 100-continue\r\n\r\n")
            assert sock.recv(64).startswith(b"HTTP/1.1 100 ")  # the app waits for the body
            sock.sendall(b'{"length": ')
        time.sleep(0.2)  # the server notices the close (were it missed, the test would pass)
        with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
            assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("path", [b"/nothing/here", b"/v1/generate"])
def test_a_body_answered_before_it_was_read_may_not_trickle_on(server, short_timeouts, path):
    """A 404 (or a 413 for a declared 2 MB body) is sent at once; the rest of the body, sent a
    byte at a time, does not keep the connection open."""
    with _connect(server[0]) as sock:
        sock.sendall(b"POST " + path + b" HTTP/1.1\r\nHost: localhost\r\n"
                     b"Content-Length: 2000000\r\n\r\n{")
        answer = _recv(sock)
        assert answer.startswith((b"HTTP/1.1 404", b"HTTP/1.1 413")), answer[:60]
        started, closed = time.monotonic(), False
        while not closed and time.monotonic() - started < 10:
            time.sleep(0.1)
            try:
                sock.send(b" ")
                sock.setblocking(False)
                closed = sock.recv(1) == b""
            except BlockingIOError:
                pass
            except OSError:
                closed = True
            finally:
                sock.setblocking(True)
    assert closed and time.monotonic() - started < 5


def _post_raw(sock: socket.socket, body: dict) -> None:
    data = json.dumps(body).encode()
    sock.sendall(POST_HEAD + b"Content-Type: application/json"
                 b"\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data))


def _recv(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    assert chunk, "the server closed the connection"
    return chunk


def test_the_head_clock_runs_only_while_a_head_is_awaited(server, short_timeouts):
    """A response that lasts three times the head's time is not cut; once a response has
    ended, the next head on the kept-alive connection is timed again."""
    with _connect(server[0]) as sock:
        _post_raw(sock, {"length": ENDLESS, "stream": True})
        received, until = b"", time.monotonic() + 1.5
        while time.monotonic() < until:
            received += _recv(sock)
        assert received.startswith(b"HTTP/1.1 200 OK") and b"event: delta" in received
    with _connect(server[0]) as sock:
        _post_raw(sock, {"length": 10, "seed": 1})
        received = b""
        while b"HTTP/1.1 408" not in received:  # the answer, then nothing sent for 0.5 s
            received += _recv(sock)
    answer, _, refusal = received.partition(b"HTTP/1.1 408 Request Timeout\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK") and b'"generated_chars":10' in answer
    assert b'"type": "request_timeout"' in refusal


def test_a_client_that_stops_reading_is_cut_off_and_its_request_ends(server, monkeypatch):
    """Its text would otherwise be kept for it, and its request run on, for as long as it
    held the connection."""
    from charrnn.serve.protocol import BoundedHttpToolsProtocol

    monkeypatch.setattr(BoundedHttpToolsProtocol, "write_stall_seconds", 0.5)
    url, models = server
    engine = models["run"].engine
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills at once
        sock.connect((host, int(port)))
        _post_raw(sock, {"length": ENDLESS, "stream": True, "num_samples": 16,
                         "logprobs": True})
        wait_until(lambda: engine.load()["rows"] == 16, 30, "the request to start")
        wait_until(lambda: engine.load()["rows"] == 0, 60, "the reader to be cut off")
        sock.setblocking(False)
        received = b""
        with contextlib.suppress(BlockingIOError, ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
    assert received.startswith(b"HTTP/1.1 200 OK")


def test_pipelined_requests_and_expect_continue_are_answered_under_the_clocks(
        server, short_timeouts):
    """Two requests sent back to back (the second's body waiting while the first is
    answered, longer than a head's time), and a client waiting for 100 Continue."""
    first = json.dumps({"length": 3000, "seed": 1}).encode()
    second = json.dumps({"length": 5, "seed": 2}).encode()
    with _connect(server[0]) as sock:
        sock.sendall(b"".join(POST_HEAD + b"Content-Length: %d\r\n\r\n%s" % (len(b), b)
                              for b in (first, second)))
        received = b""
        while received.count(b"HTTP/1.1 200 OK") < 2 or not received.endswith(b"}"):
            received += _recv(sock)
        assert b'"generated_chars":3000' in received and b'"generated_chars":5' in received
    with _connect(server[0]) as sock:
        sock.sendall(POST_HEAD + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n"
                     % len(second))
        assert _recv(sock).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(second)
        received = b""
        while b'"generated_chars":5' not in received:
            received += _recv(sock)


def test_without_httptools_the_h11_parser_gets_the_same_bound(monkeypatch, server):
    import builtins

    from charrnn.serve.app import MAX_HEAD_BYTES
    from charrnn.serve.protocol import BoundedHttpToolsProtocol
    from charrnn.serve.server import http_protocol, make_server

    assert http_protocol() is BoundedHttpToolsProtocol
    real_import = builtins.__import__

    def no_httptools(name, *args, **kwargs):
        if name == "charrnn.serve.protocol":
            raise ImportError("No module named 'httptools'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_httptools)
    assert http_protocol() == "h11"
    config = make_server(server[1]).config
    assert config.h11_max_incomplete_event_size == MAX_HEAD_BYTES


def test_unknown_paths_and_methods_answer_json(client):
    assert client.get("/v2/nothing").json()["error"]["type"] == "not_found"
    assert client.get("/v1/generate").status_code == 405
    assert client.post("/v1/generate", content=b"").status_code == 200  # all defaults


def test_bad_requests_in_a_burst_leave_streams_running(client, server):
    url, _ = server
    body = {"prime": "The ", "length": 600, "seed": 8, "stream": True}
    expected = client.post("/v1/generate", json={**body, "stream": False}).json()

    async def burst():
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as aclient:
            async def good():
                async with aclient.stream("POST", "/v1/generate", json=body) as response:
                    return list(sse_events([x async for x in response.aiter_lines()]))[-1][1]

            bad = [aclient.post("/v1/generate", content=b) for b in
                   (b"{", b'{"length": -5}', b'{"prime": "\xe2\x98\x83"}', b'{"model": 3}')] * 5
            results = await asyncio.gather(good(), good(), *bad)
            return results[:2], results[2:]

    goods, bads = asyncio.run(burst())
    assert goods == [expected, expected]
    assert {r.status_code for r in bads} == {400, 422}


# ---- disconnects, queues, keys ------------------------------------------------------------------
def test_requests_are_queued_by_their_clients_address(server, client, monkeypatch):
    """The engine hears who sent each request (queued requests take turns by it): the peer's
    address, or the one a proxy on this machine forwards."""
    engine = server[1]["run"].engine
    clients = []
    add_request = engine.add_request

    def recording(request_id, prime, params, client=None):  # noqa: ANN001, ANN202
        clients.append(client)
        return add_request(request_id, prime, params, client)

    monkeypatch.setattr(engine, "add_request", recording)
    assert client.post("/v1/generate", json={"length": 5}).status_code == 200
    forwarded = client.post("/v1/generate", json={"length": 5},
                            headers={"X-Forwarded-For": "203.0.113.7"})
    assert forwarded.status_code == 200
    assert clients == ["127.0.0.1", "203.0.113.7"]


def test_a_client_that_disconnects_mid_stream_frees_its_rows(server):
    url, models = server
    engine = models["run"].engine
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"length": ENDLESS, "num_samples": 5, "stream": True}).encode()
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(POST_HEAD + b"Content-Type: application/json"
                    b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert b"event: delta" in raw.recv(65536) or b"event: delta" in raw.recv(65536)
        assert engine.load()["rows"] == 5
    wait_until(lambda: engine.load()["rows"] == 0, 5, "the rows to be freed")


def test_a_client_that_disconnects_while_waiting_for_json_frees_its_rows(server):
    url, models = server
    engine = models["run"].engine
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"length": ENDLESS, "num_samples": 3}).encode()
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(POST_HEAD + b"Content-Length: "
                    + str(len(body)).encode() + b"\r\n\r\n" + body)
        wait_until(lambda: engine.load()["rows"] == 3, 5, "the request to start")
    wait_until(lambda: engine.load()["rows"] == 0, 5, "the rows to be freed")


def test_beyond_the_queue_requests_get_503_and_retry_after(tiny_run):
    models = load(tiny_run, max_streams=1, max_queue=1, max_length=ENDLESS)
    with running_server(models) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        engine = models["run"].engine
        with client.stream("POST", "/v1/generate", json={"length": ENDLESS, "stream": True}) as a:
            a_lines = a.iter_lines()  # kept: dropping the iterator would close the stream
            next(a_lines)  # generating: the batch is full
            with client.stream("POST", "/v1/generate",
                               json={"length": 20, "seed": 1, "stream": True}) as b:
                wait_until(lambda: engine.load()["queued"] == 1, 5, "the request to queue")
                refused = client.post("/v1/generate", json={"length": 20})
                assert refused.status_code == 503
                assert refused.headers["retry-after"] == "1"
                assert refused.json()["error"]["type"] == "overloaded"
                a.close()  # leaving frees the row: the queued request runs
                events = list(sse_events(b.iter_lines()))
        assert events[-1][0] == "done"
        assert len(events[-1][1]["samples"][0]["text"]) == 20


def test_an_api_key_guards_everything_but_the_page(tiny_run):
    with running_server(load(tiny_run), api_key="s3cret") as url, \
            httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        # The page, and the documentation of the API (which is no secret), need no key.
        for path in ("/", "/static/app.js", "/static/style.css", "/docs", "/openapi.json"):
            assert client.get(path).status_code == 200, path
        # Only their own files, and framed by no other site, under either name.
        for page in ("/", "/docs", "/static/index.html", "/static/docs.html"):
            headers = client.get(page).headers
            assert "frame-ancestors 'none'" in headers["content-security-policy"]
            assert headers["x-frame-options"] == "DENY"
        for method, path in (("GET", "/v1/models"), ("GET", "/healthz"),
                             ("POST", "/v1/generate")):
            refused = client.request(method, path)
            assert refused.status_code == 401, path
            assert refused.headers["www-authenticate"] == "Bearer"
            assert refused.json()["error"]["field"] == "authorization"
            wrong = client.request(method, path, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert client.get("/v1/models", headers=good).status_code == 200
        for scheme in ("bearer", "BEARER"):  # the scheme's case does not matter (RFC 9110)
            assert client.get("/v1/models", headers={
                "Authorization": f"{scheme} s3cret"}).status_code == 200
        assert client.get("/v1/models", headers={"Authorization": "Basic s3cret"}
                          ).status_code == 401
        answer = client.post("/v1/generate", json={"length": 5}, headers=good)
        assert answer.status_code == 200 and len(answer.json()["samples"][0]["text"]) == 5


def test_several_models_are_served_by_name(tiny_run, tmp_path):
    from charrnn.serve.models import load_models

    models = load_models([str(tiny_run), f"other={tiny_run}"], "cpu")
    with running_server(models) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        names = [m["name"] for m in client.get("/v1/models").json()["models"]]
        assert names == ["run", "other"]
        body = {"prime": "The ", "length": 40, "seed": 3}
        first = client.post("/v1/generate", json=body).json()
        other = client.post("/v1/generate", json={**body, "model": "other"}).json()
        assert first["model"] == "run" and other["model"] == "other"
        assert first["samples"] == other["samples"]  # the same weights, the same seed


def test_events_are_spaced_out_while_many_streams_generate():
    from charrnn.serve.answers import EVENT_INTERVAL, MAX_EVENT_INTERVAL, event_interval

    assert event_interval(0) == event_interval(1) == event_interval(32) == EVENT_INTERVAL
    assert event_interval(64) == pytest.approx(2 * EVENT_INTERVAL)
    assert event_interval(10_000) == MAX_EVENT_INTERVAL


# ---- long answers ------------------------------------------------------------------------------
def _outcome(samples: int, length: int, logprobs: bool):
    from charrnn.serve.streams import Outcome
    texts = [("ab\"é\n" * length)[:length] for _ in range(samples)]
    values = [[-(i + 1) * 0.123456789 - k * 1e-7 for k in range(length)] for i in range(samples)]
    return Outcome(texts, values if logprobs else None, ["length"] * samples, prime_chars=3)


@pytest.mark.parametrize("length", [0, 1, 4096, 4097, 10_000])
@pytest.mark.parametrize("logprobs", [True, False])
@pytest.mark.parametrize("error", [None, {"type": "model_error", "message": "x"}])
def test_an_answer_written_in_pieces_is_the_summary_as_json(length, logprobs, error):
    from charrnn.serve.answers import LOGPROBS_PER_PIECE, _json, answer_pieces, summary
    outcome = _outcome(3, length, logprobs)
    whole = {"error": error} if error is not None else {}
    whole |= summary("m", outcome, logprobs)
    pieces = list(answer_pieces("m", outcome, logprobs, error))
    assert "".join(pieces) == _json(whole)
    assert json.loads("".join(pieces)) == json.loads(_json(whole))
    assert all(piece.count(",") <= LOGPROBS_PER_PIECE + 8 for piece in pieces)


def test_a_long_answer_lets_the_event_loop_run_while_it_is_written():
    """64 samples of 10,000 characters with log-probabilities: others' work runs between its
    pieces (written at once, it held every stream's events for about half a second)."""
    from charrnn.serve.answers import _json, answer_json, summary
    outcome = _outcome(64, 10_000, True)

    async def race() -> tuple[str, int]:
        turns = 0

        async def other_work() -> None:
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(other_work())
        await asyncio.sleep(0)
        try:
            return await answer_json("m", outcome, True), turns
        finally:
            ticker.cancel()

    text, turns = asyncio.run(race())
    assert text == _json(summary("m", outcome, True))
    assert turns >= 2 * 64  # about 100 KB per sample: several turns each (at once: one)


def test_a_failed_stream_ends_with_an_error_event_carrying_the_answer():
    """A model that fails mid-stream: the text so far, then `error` with the whole answer."""
    from types import SimpleNamespace

    from charrnn.serve.answers import events
    from charrnn.serve.streams import ERROR, Delta, RequestStream

    async def read() -> list[bytes]:
        stream = RequestStream("r", 1, False, 2, asyncio.get_running_loop())
        stream._put(Delta(["ab"]))
        stream._end([ERROR], "the scores are not numbers")
        stream._ready.set()
        served = SimpleNamespace(name="m", engine=SimpleNamespace(load=lambda: {"rows": 0},
                                                                  abort=lambda _: None))
        return [event async for event in events(served, stream, False)]

    delta, last = asyncio.run(read())
    assert delta.startswith(b"event: delta\n")
    name, data = last.decode().strip().split("\n")
    assert name == "event: error" and json.loads(data.removeprefix("data: ")) == {
        "error": {"type": "model_error", "message": "the scores are not numbers"},
        "model": "m", "samples": [{"text": "ab", "finish_reason": "error"}],
        "usage": {"prime_chars": 2, "generated_chars": 2}}
