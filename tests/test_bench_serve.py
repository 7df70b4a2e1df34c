"""The serving benchmark's load generator counts what the server sends, on kept-alive
connections: its figures in BENCHMARKS.md rest on this."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from serving import load, running_server

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def bench_serve():
    sys.path.insert(0, str(BENCH))  # the benchmark imports its neighbour `common`
    try:
        spec = importlib.util.spec_from_file_location("bench_serve", BENCH / "serve.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def url(tiny_run):
    with running_server(load(tiny_run, max_streams=8, max_length=1000)) as url:
        yield url


def test_streamed_and_plain_requests_are_counted_exactly_on_one_connection(bench_serve, url):
    async def requests() -> tuple[dict, int, bytes]:
        client = bench_serve.LoopbackClient(url)
        stats = bench_serve._fresh_stats()
        try:
            await bench_serve.stream_once(client, 120, stats, burst=True)
            await bench_serve.stream_once(client, 80, stats)
            status, body = await client.post("/v1/generate", {"length": 30})
        finally:
            client.close()
        return stats, status, body

    stats, status, body = asyncio.run(requests())
    assert stats["chars"] == 200 and stats["requests"] == 2  # every character, once
    assert len(stats["ttfc"]) == 2 and len(stats["steady"]) == 1
    assert all(0 < seconds < 30 for seconds in stats["ttfc"])
    assert status == 200 and len(json.loads(body)["samples"][0]["text"]) == 30


def test_a_load_level_reports_a_rate_and_stops_by_itself(bench_serve, url):
    result = asyncio.run(bench_serve.load_level(url, clients=3, length=50, seconds=1.0))
    assert result["requests"] > 0 and result["chars_per_s"] > 0
    assert result["p50"] <= result["p99"] and result["reconnects"] == 0
    assert result["elapsed"] < 30


def test_an_answer_other_than_200_is_an_error(bench_serve, url):
    async def bad() -> None:
        client = bench_serve.LoopbackClient(url)
        try:
            await bench_serve.stream_once(client, 10**7, bench_serve._fresh_stats())
        finally:
            client.close()

    with pytest.raises(RuntimeError, match="answered 4"):
        asyncio.run(bad())
