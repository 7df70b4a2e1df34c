"""`charrnn serve` as a user runs it: a real process, stopped by a signal; its clean errors."""

from __future__ import annotations

import json
import signal
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from charrnn.cli import app
from charrnn.cli.serve import _is_loopback, exposure_warning
from charrnn.serve.models import parse_model_spec
from conftest import assert_clean_error
from serving import ServerProcess, sse_events


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_running_streams_cleanly_and_exits_0(tiny_run, sig):
    server = ServerProcess("-k", str(tiny_run), "--device", "cpu", "--max-length", "1000000",
                           "--threads", "1")
    assert "characters, on cpu (1 thread)" in server.banner
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client, client.stream(
                "POST", "/v1/generate", json={"length": 1_000_000, "stream": True}) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("event: delta")
            server.process.send_signal(sig)
            events = list(sse_events(lines))
    finally:
        status, out, err = server.wait(timeout=30)
    assert events[-1][0] == "done"
    assert events[-1][1]["samples"][0]["finish_reason"] == "shutdown"
    assert status == 0, err
    assert "stopped" in out and "Traceback" not in err


def test_a_signal_answers_a_request_still_sending_its_body_at_once(tiny_run):
    """Half a body when the signal comes: a 503 JSON answer at once and a clean exit, not a
    wait of the whole grace period ending in a 500 and a traceback."""
    from charrnn.serve.server import GRACE_SECONDS

    server = ServerProcess("-k", str(tiny_run), "--device", "cpu", "--threads", "1")
    try:
        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: localhost\r\n"
                         b"Content-Length: 100\r\nExpect: 100-continue\r\n\r\n")
            # The server asks for the body once the app waits for it.
            assert sock.recv(64).startswith(b"HTTP/1.1 100 ")
            sock.sendall(b"{")
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        status, out, err = server.wait(timeout=30)
        took = time.monotonic() - signalled
    finally:
        server.kill()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 "), answer
    assert json.loads(body)["error"]["type"] == "shutting_down"
    assert status == 0 and "Traceback" not in err, err
    assert took < GRACE_SECONDS / 2


def test_without_the_serve_extra_it_says_how_to_install_it(tiny_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # `import uvicorn` now fails
    result = CliRunner().invoke(app, ["serve", "-k", str(tiny_run)])
    assert_clean_error(result, 1, "pip install 'charrnn[serve]'", one_line=True)


@pytest.mark.parametrize(("args", "says"), [
    (["--max-streams", "0"], "--max-streams must be at least 1"),
    (["--max-length", "0"], "--max-length must be at least 1"),
    (["--threads", "0"], "--threads must be at least 1, not 0"),
    (["--port", "70000"], "--port must be between"),
    (["--device", "tpu"], "unknown device"),
    (["--host", "no.such.host.invalid"], "not an address of this machine"),
])
def test_bad_options_are_one_line(tiny_run, args, says):
    result = CliRunner().invoke(app, ["serve", "-k", str(tiny_run), "--port", "0", *args])
    assert_clean_error(result, 2, says, one_line=True)


def test_a_port_in_use_and_clashing_names_are_clean_errors(tiny_run):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = CliRunner().invoke(app, ["serve", "-k", str(tiny_run), "--port", port])
        assert_clean_error(result, 2, f"port {port} on 127.0.0.1 is in use", one_line=True)
    result = CliRunner().invoke(app, ["serve", "-k", str(tiny_run), "-k", str(tiny_run),
                                      "--port", "0"])
    assert_clean_error(result, 2, "two checkpoints are named run", one_line=True)


def test_model_names_and_loopback_addresses():
    assert parse_model_spec("runs/shakespeare") == ("shakespeare", Path("runs/shakespeare"))
    assert parse_model_spec("runs/shakespeare/best.pt")[0] == "shakespeare"
    assert parse_model_spec("runs/shakespeare/step-100.pt")[0] == "step-100"
    assert parse_model_spec("hlm=runs/hongloumeng")[0] == "hlm"
    assert all(_is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "127.0.0.2"))
    assert not any(_is_loopback(h) for h in ("0.0.0.0", "192.168.1.4", "::", "example.org"))


def test_a_model_name_not_allowed_is_named_as_such(tiny_run):
    """`-k '<b>x</b>=RUN'` said "checkpoint not found: <b>x</b>=RUN"."""
    for name in ("<b>x</b>", "my model"):
        result = CliRunner().invoke(app, ["serve", "-k", f"{name}={tiny_run}", "--port", "0"])
        assert_clean_error(result, 2, f"model name {name!r} is not allowed", one_line=True)


def test_serving_beyond_this_machine_without_a_key_is_warned_about():
    assert "no authentication" in exposure_warning("0.0.0.0", None)
    assert exposure_warning("0.0.0.0", "k3y") is None
    assert exposure_warning("127.0.0.1", None) is None


def test_the_models_share_the_threads_so_that_together_they_hold_no_more(monkeypatch):
    import os

    from charrnn.devices import serving_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert serving_threads(1) == 16  # every core the process may use
    assert serving_threads(3) == 5
    assert serving_threads(2, threads=6) == 3
    assert serving_threads(4, threads=2) == 1  # one each: never none
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert serving_threads(1) == 1
