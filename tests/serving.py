"""Helpers for the serve tests: real servers on loopback ports (in a thread, or `charrnn serve`
in a process) and a reader of server-sent events."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path


def load(run_dir: Path, **limits) -> dict:
    """The run served as one model named 'run' (its directory's name), on the CPU."""
    from charrnn.serve.models import load_models

    return load_models([str(run_dir)], "cpu", **limits)


@contextlib.contextmanager
def running_server(models: dict, api_key: str | None = None) -> Iterator[str]:
    """uvicorn serving these models on a free loopback port, in a thread; yields its URL."""
    from charrnn.serve.server import bind, make_server, url_of

    sock = bind("127.0.0.1", 0)
    server = make_server(models, api_key)
    errors = _ErrorLog()  # what the server logs as an error: an unexpected exception
    for name in ("uvicorn.error", "charrnn"):
        logging.getLogger(name).addHandler(errors)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()
        for served in models.values():
            served.engine.close()
        for name in ("uvicorn.error", "charrnn"):
            logging.getLogger(name).removeHandler(errors)
    assert not errors.records, "the server logged errors:\n" + "\n".join(errors.records)


class _ErrorLog(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


def sse_events(lines: Iterable[str]) -> Iterator[tuple[str, dict]]:
    """(event, data) for each server-sent event in a stream of lines; comments skipped."""
    event, data = "message", []
    for line in lines:
        if line == "":
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
    if data:
        yield event, json.loads("\n".join(data))


def wait_until(condition, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class ServerProcess:
    """`charrnn serve ARGS --port 0` in a process of its own; `url` is the address it
    printed. Its stdout is read by one thread throughout (so the pipe never fills)."""

    def __init__(self, *args: str, timeout: float = 60.0):
        self._stderr = tempfile.TemporaryFile("w+")  # a file: an unread pipe could fill up
        self.process = subprocess.Popen(
            [sys.executable, "-m", "charrnn", "serve", *args, "--port", "0"],
            stdout=subprocess.PIPE, stderr=self._stderr, text=True,
            env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = self._address(timeout)

    def _read(self) -> None:
        for line in self.process.stdout:
            self._lines.put(line)

    def _address(self, timeout: float) -> str:
        deadline, seen = time.monotonic() + timeout, []
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                seen.append(self._lines.get(timeout=0.5))
            except queue.Empty:
                continue
            found = re.search(r"serving at (http://\S+)", seen[-1])
            if found:
                self.banner = "".join(seen)  # what it printed up to its address
                return found.group(1)
        self.kill()
        raise AssertionError(f"the server did not start: {''.join(seen)}{self.stderr()}")

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()

    def wait(self, timeout: float) -> tuple[int, str, str]:
        """Exit status, the rest of stdout, and stderr, once it ends (killed at `timeout`)."""
        try:
            self.process.wait(timeout)
        finally:
            self.kill()
        self._reader.join(10)
        out = "".join(self._lines.get() for _ in range(self._lines.qsize()))
        return self.process.returncode, out, self.stderr()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
