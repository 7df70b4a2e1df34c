"""Serving throughput: many clients streaming from `charrnn serve` against one-at-a-time.

Starts `charrnn serve` twice on a loopback port with a 2x256 LSTM (random weights unless
--checkpoint is given: speed does not depend on them): as it runs by default (continuous
batching, --max-streams 64) and as a one-request-at-a-time server (the same code with
--max-streams 1). For 1, 8, 32 and 64 concurrent clients, each streaming --length characters
per request in a loop for --seconds, it prints the aggregate characters per second and the time
to first character (p50, p99; and p99 leaving out each client's first request: the clients
start together, and their first requests arrive as one burst) of both, side by side, and the
cores the server and the load generator kept busy (the clients share the server's cores, so
they are written to cost little: see LoopbackClient). Then it
sends --rss-requests requests to a fresh batching server and reports its resident memory
every 1,000 requests.

    python bench/serve.py                      # the full run (about 5 minutes)
    python bench/serve.py --smoke              # a few seconds of each, to check it works

Every wait is bounded: each load level stops after --seconds (requests still running are
cancelled), and the memory check after --rss-seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table  # noqa: E402

from charrnn import checkpoint  # noqa: E402
from charrnn.model import CharRNN, ModelArgs  # noqa: E402
from charrnn.vocab import Vocab  # noqa: E402

HIDDEN, LAYERS, EMBEDDING = 256, 2, 64
REQUEST_TIMEOUT = 60.0  # seconds: a request outside a timed level that takes longer fails


def random_checkpoint(directory: Path) -> Path:
    """A 2x256 LSTM with random weights over a Shakespeare-sized alphabet (66 ids)."""
    torch.manual_seed(0)
    vocab = Vocab.build(["".join(chr(c) for c in range(32, 97)) + "\n"])
    model = CharRNN(ModelArgs(vocab_size=vocab.size, cell="lstm", embedding_dim=EMBEDDING,
                              hidden_size=HIDDEN, num_layers=LAYERS, dropout=0.0)).eval()
    path = directory / "lstm-2x256.pt"
    checkpoint.save(checkpoint.build_payload(model, vocab, step=0, val_loss=None,
                                             best_val_loss=None, elapsed=0.0, config={}), path)
    return path


class Server:
    """`charrnn serve` in a process of its own, on a free loopback port."""

    def __init__(self, model: Path, *options: str):
        self.errors = tempfile.TemporaryFile("w+")  # a file: an unread pipe could fill and block
        self.process = subprocess.Popen(
            [sys.executable, "-m", "charrnn", "serve", "-k", f"bench={model}", "--port", "0",
             "--host", "127.0.0.1", "--device", "cpu", "--max-queue", "4096", *options],
            stdout=subprocess.PIPE, stderr=self.errors, text=True,
            env={**os.environ, "NO_COLOR": "1"})
        self.url = self._address(timeout=120)

    def _address(self, timeout: float) -> str:
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.process.stdout],
                         daemon=True).start()  # also keeps the pipe drained
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                found = re.search(r"serving at (http://\S+)", lines.get(timeout=1.0))
            except queue.Empty:
                continue
            if found:
                return found.group(1)
        self.stop()
        raise RuntimeError(f"the server did not start: {self.stderr()}")

    def stderr(self) -> str:
        self.errors.seek(0)
        return self.errors.read()

    def rss_mb(self) -> float:
        """Resident memory of the server process, MB (Linux)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self) -> float:
        """CPU time the server process has used so far, all its threads (Linux)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class LoopbackClient:
    """One kept-alive HTTP/1.1 connection to the server, on asyncio's own streams.

    The load generator shares the server's two cores, so it must cost little: a general HTTP
    client (httpx) kept about 0.37 of a core busy at 64 clients, this one under 0.1. It speaks
    only what the benchmark needs: POST a JSON body, read a chunked or sized answer."""

    def __init__(self, url: str):
        self.host, port = url.split("//", 1)[1].rsplit(":", 1)
        self.port = int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reconnects = 0

    async def post(self, path: str, body: dict, on_data=None) -> tuple[int, bytes]:
        """(status, body); with on_data, a chunked body is passed to it as it arrives. A
        kept-alive connection the server closed is opened again, once."""
        try:
            return await self._post(path, body, on_data)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.reconnects += 1
            self.close()
            return await self._post(path, body, on_data)

    async def _post(self, path: str, body: dict, on_data) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        payload = json.dumps(body).encode()
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: "
                          f"application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
                          .encode() + payload)
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
        status = int(head.split(" ", 2)[1])
        sized = re.search(r"\r\ncontent-length: *(\d+)", head)
        if sized:
            return status, await self.reader.readexactly(int(sized.group(1)))
        if "transfer-encoding: chunked" not in head:
            raise RuntimeError(f"an answer neither sized nor chunked: {head!r}")
        received = bytearray()
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = (await self.reader.readexactly(size + 2))[:-2]  # and its CRLF
            if size == 0:
                return status, bytes(received)
            if on_data is None:
                received += chunk
            else:
                on_data(chunk)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def stream_once(client: LoopbackClient, length: int, stats: dict,
                      burst: bool = False) -> None:
    """One streamed request: counts its characters as they arrive and its first-character
    latency."""
    start = time.perf_counter()
    first = None
    pending = bytearray()

    def on_data(chunk: bytes) -> None:
        nonlocal first
        pending.extend(chunk)
        while (end := pending.find(b"\n\n")) >= 0:
            event = bytes(pending[:end])
            del pending[:end + 2]
            if not event.startswith(b"event: delta"):
                continue  # the final summary repeats the text: not counted again
            samples = json.loads(event[event.index(b"data:") + 5:])["samples"]
            chars = sum(len(sample["text"]) for sample in samples)
            stats["chars"] += chars
            if first is None and chars:
                first = time.perf_counter() - start
                stats["ttfc"].append(first)
                if not burst:
                    stats["steady"].append(first)

    status, _ = await client.post("/v1/generate", {"length": length, "stream": True}, on_data)
    if status != 200:
        raise RuntimeError(f"the server answered {status}")
    stats["requests"] += 1


async def load_level(url: str, clients: int, length: int, seconds: float) -> dict:
    """`clients` clients, each streaming request after request for `seconds`."""
    # "steady": the first-character latencies of every request but each client's first (the
    # clients start together, so their first requests arrive as one burst).
    stats = _fresh_stats()
    started = time.perf_counter()  # for the CPU shares: warm-up and wind-down included
    connections = [LoopbackClient(url) for _ in range(clients)]
    await asyncio.wait_for(stream_once(connections[0], 20, _fresh_stats()), REQUEST_TIMEOUT)

    async def client_loop(client: LoopbackClient) -> None:
        await stream_once(client, length, stats, burst=True)  # every client at once
        while True:
            await stream_once(client, length, stats)

    tasks = [asyncio.create_task(client_loop(client)) for client in connections]
    start = time.perf_counter()
    await asyncio.sleep(seconds)
    elapsed, chars = time.perf_counter() - start, stats["chars"]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for client in connections:
        client.close()
    failed = [t.exception() for t in tasks if not t.cancelled() and t.exception()]
    if failed:
        raise RuntimeError(f"{len(failed)} clients failed: {failed[0]}")
    ttfc, steady = sorted(stats["ttfc"]), sorted(stats["steady"])
    return {"chars_per_s": chars / elapsed, "requests": stats["requests"],
            "reconnects": sum(client.reconnects for client in connections),
            "elapsed": time.perf_counter() - started,
            "p50": percentile(ttfc, 50), "p99": percentile(ttfc, 99),
            "p99_steady": percentile(steady, 99)}


def _fresh_stats() -> dict:
    return {"chars": 0, "requests": 0, "ttfc": [], "steady": []}


def _own_cpu_seconds() -> float:
    """CPU time this process (the load generator) has used so far."""
    times = os.times()
    return times.user + times.system


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[min(98, int(q) - 1)]


async def memory_run(server: Server, requests: int, length: int, seconds: float) -> list:
    """Resident memory every 1,000 requests (64 at a time; half streamed, half JSON)."""
    readings = [(0, server.rss_mb())]
    done = 0
    deadline = time.monotonic() + seconds
    clients = [LoopbackClient(server.url) for _ in range(64)]

    async def one(client: LoopbackClient, i: int) -> None:
        nonlocal done
        if i % 2:
            await stream_once(client, length, _fresh_stats())
        else:
            status, _ = await client.post("/v1/generate", {"length": length})
            if status != 200:
                raise RuntimeError(f"the server answered {status}")
        done += 1
        if done % 1000 == 0:
            readings.append((done, server.rss_mb()))

    queue = iter(range(requests))

    async def worker(client: LoopbackClient) -> None:
        for i in queue:
            if time.monotonic() > deadline:
                return
            await asyncio.wait_for(one(client, i), REQUEST_TIMEOUT)

    try:
        await asyncio.gather(*(worker(client) for client in clients))
    finally:
        for client in clients:
            client.close()
    if readings[-1][0] != done:
        readings.append((done, server.rss_mb()))
    return readings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="a run or .pt (default: random 2x256)")
    parser.add_argument("--clients", default="1,8,32,64", help="concurrent clients per level")
    parser.add_argument("--length", type=int, default=500, help="characters per request")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each level")
    parser.add_argument("--threads", type=int, help="the servers' --threads")
    parser.add_argument("--rss-requests", type=int, default=10_000)
    parser.add_argument("--rss-length", type=int, default=100)
    parser.add_argument("--rss-seconds", type=float, default=900.0)
    parser.add_argument("--smoke", action="store_true",
                        help="2 s per level, 1 and 8 clients, 300 requests for memory")
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.clients, args.rss_requests = 2.0, "1,8", 300
    levels = [int(c) for c in args.clients.split(",")]
    extra = ["--threads", str(args.threads)] if args.threads else []
    threads = args.threads or "the default (every core)"
    print(f"machine: {machine()}; servers' torch threads: {threads}")
    with tempfile.TemporaryDirectory() as tmp:
        model = args.checkpoint or random_checkpoint(Path(tmp))
        results = {}
        for label, options in (("batched", []), ("one at a time", ["--max-streams", "1"])):
            with Server(model, *options, *extra) as server:
                for clients in levels:
                    server_cpu, client_cpu = server.cpu_seconds(), _own_cpu_seconds()
                    result = asyncio.run(load_level(server.url, clients, args.length,
                                                    args.seconds))
                    result["server_cpu"] = (server.cpu_seconds() - server_cpu) / result["elapsed"]
                    result["client_cpu"] = (_own_cpu_seconds() - client_cpu) / result["elapsed"]
                    results[label, clients] = result
                    print(f"{label:>13}, {clients:>2} clients: {result['chars_per_s']:>9,.0f} "
                          f"chars/s, {result['requests']:>5} requests, first character "
                          f"p50 {1000 * result['p50']:,.0f} ms, "
                          f"p99 {1000 * result['p99']:,.0f} ms "
                          f"({1000 * result['p99_steady']:,.0f} ms after the first burst); "
                          f"cores busy: server {result['server_cpu']:.2f}, "
                          f"load generator {result['client_cpu']:.2f}"
                          + (f"; {result['reconnects']} reconnects" if result["reconnects"]
                             else ""), flush=True)
        rows = []
        for clients in levels:
            ours, single = results["batched", clients], results["one at a time", clients]
            rows.append([str(clients), f"{ours['chars_per_s']:,.0f}",
                         f"{1000 * ours['p50']:,.0f}", f"{1000 * ours['p99']:,.0f}",
                         f"{1000 * ours['p99_steady']:,.0f}",
                         f"{single['chars_per_s']:,.0f}", f"{1000 * single['p50']:,.0f}",
                         f"{1000 * single['p99']:,.0f}",
                         f"{ours['chars_per_s'] / single['chars_per_s']:.1f}x"])
        print()
        print(table(rows, ["clients", "batched chars/s", "TTFC p50 ms", "TTFC p99 ms",
                           "p99 after the burst", "one-at-a-time chars/s", "TTFC p50 ms",
                           "TTFC p99 ms", "throughput ratio"]))
        with Server(model, *extra) as server:
            readings = asyncio.run(memory_run(server, args.rss_requests, args.rss_length,
                                              args.rss_seconds))
    print(f"\nresident memory of the batching server over {readings[-1][0]:,} requests of "
          f"{args.rss_length} characters (64 at a time):")
    print("  " + ", ".join(f"{n:,}: {mb:,.0f} MB" for n, mb in readings))
    # The first 1,000 requests warm up (allocator pools, lazily built tables): measured after.
    (start, base) = readings[1] if len(readings) > 2 else readings[0]
    growth = 100 * (readings[-1][1] - base) / base
    print(f"  growth from request {start:,} to {readings[-1][0]:,}: {growth:+.1f}%")


if __name__ == "__main__":
    main()
