"""Answering a request: its JSON answer, or the server-sent events of a streamed one.

The engine hands over deltas and an outcome (streams.py); this module turns them into the
API's JSON: one `delta` event per hand-off, at most one every EVENT_INTERVAL seconds per
request (longer while many streams generate: `event_interval`), then `done` (or `error`)
with the whole answer, which a long answer writes in pieces with the event loop's other work
in between (`answer_json`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

from starlette.requests import Request

from charrnn.serve.models import ServedModel
from charrnn.serve.streams import ERROR, Delta, Outcome, RequestStream

EVENT_INTERVAL = 0.05  # seconds between a stream's events: text generated meanwhile is merged
# With more streams than this generating, their events are spaced out in proportion (64
# streams: every 0.1 s), so writing events stays a small share of a busy CPU's time: with 64
# streams on 2 cores the event loop's thread then kept 0.10 of a core busy instead of 0.14.
EVENT_STREAMS = 32
MAX_EVENT_INTERVAL = 0.25
PING_SECONDS = 15.0  # a comment line keeps a queued stream's connection from timing out
# A long answer is written this much at a time, the event loop's other work in between (a
# piece of log-probabilities takes a few milliseconds to round and write).
LOGPROBS_PER_PIECE = 4096
ANSWER_PIECE_CHARS = 32 * 1024


def summary(model: str, outcome: Outcome, with_logprobs: bool) -> dict:
    """The answer to a request, also the last event of a streamed one."""
    samples = []
    for i, (text, reason) in enumerate(zip(outcome.texts, outcome.finish_reasons, strict=True)):
        sample: dict[str, Any] = {"text": text}
        if with_logprobs and outcome.logprobs is not None:
            sample["logprobs"] = _rounded(outcome.logprobs[i])
        sample["finish_reason"] = reason
        samples.append(sample)
    return {"model": model, "samples": samples,
            "usage": {"prime_chars": outcome.prime_chars,
                      "generated_chars": outcome.generated_chars}}


def _rounded(values: list[float]) -> list[float]:
    # float32 log-probs carry about seven significant digits; six decimals keep JSON short.
    return [round(v, 6) for v in values]


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _sse(event: str, data_json: str) -> bytes:
    """One server-sent event carrying JSON already written."""
    return f"event: {event}\ndata: {data_json}\n\n".encode()


async def answer_json(model: str, outcome: Outcome, with_logprobs: bool,
                      error: dict | None = None) -> str:
    """`summary` (after `error`, if given) as compact JSON, written in pieces with the event
    loop's other work in between: 64 samples of 10,000 characters with log-probabilities
    make about 6 MB, and written at once they held every other stream's events for 0.5 s."""
    parts, written = [], 0
    for piece in answer_pieces(model, outcome, with_logprobs, error):
        parts.append(piece)
        written += len(piece)
        if written >= ANSWER_PIECE_CHARS:
            written = 0
            await asyncio.sleep(0)
    return "".join(parts)


def answer_pieces(model: str, outcome: Outcome, with_logprobs: bool,
                  error: dict | None = None) -> Iterator[str]:
    """The text of `_json({"error": error, **summary(...)})` (no "error" key when None) in
    pieces of at most LOGPROBS_PER_PIECE log-probabilities, rounded a piece at a time."""
    answer = summary(model, outcome, with_logprobs=False)
    logprobs = outcome.logprobs if with_logprobs else None
    head = {"error": error} if error is not None else {}
    yield _json({**head, "model": model})[:-1] + ',"samples":['
    for i, sample in enumerate(answer["samples"]):
        yield ("," if i else "") + '{"text":' + _json(sample["text"])
        if logprobs is not None:
            values = logprobs[i]
            yield ',"logprobs":['
            for start in range(0, len(values), LOGPROBS_PER_PIECE):
                piece = _json(_rounded(values[start:start + LOGPROBS_PER_PIECE]))[1:-1]
                yield ("," if start else "") + piece
            yield "]"
        yield ',"finish_reason":' + _json(sample["finish_reason"]) + "}"
    yield '],"usage":' + _json(answer["usage"]) + "}"


def _delta_event(delta: Delta) -> bytes:
    samples = []
    for i, text in enumerate(delta.texts):
        if text:
            sample: dict[str, Any] = {"index": i, "text": text}
            if delta.logprobs is not None:
                sample["logprobs"] = _rounded(delta.logprobs[i])
            samples.append(sample)
    return _sse("delta", _json({"samples": samples}))


async def events(served: ServedModel, stream: RequestStream, with_logprobs: bool
                 ) -> AsyncIterator[bytes]:
    """Server-sent events: `delta` as text is written, then `done` (or `error`) with the
    whole answer. A client that goes away cancels this generator: its request is aborted."""
    try:
        while True:
            delta = await stream.next_delta(timeout=PING_SECONDS)
            if delta is None:
                break
            if delta.chars == 0:
                yield b": ping\n\n"  # a comment: keeps the connection open while queued
                continue
            yield _delta_event(delta)
            if not stream.finished:
                # Let text gather: one event per interval.
                await stream.pause(event_interval(served.engine.load()["rows"]))
        outcome = stream.outcome()
        failed = outcome.error is not None or ERROR in outcome.finish_reasons
        error = {"type": "model_error", "message": outcome.error} if failed else None
        answer = await answer_json(served.name, outcome, with_logprobs, error)
        yield _sse("error" if failed else "done", answer)
    finally:
        if not stream.finished:
            served.engine.abort(stream.id)


def event_interval(rows: int) -> float:
    """Seconds between one stream's events while `rows` streams generate on its model."""
    return min(MAX_EVENT_INTERVAL, EVENT_INTERVAL * max(1.0, rows / EVENT_STREAMS))


async def outcome_unless_gone(request: Request, served: ServedModel, stream: RequestStream
                              ) -> Outcome | None:
    """The whole outcome, or None (the request aborted) if the client disconnects first."""
    result = asyncio.ensure_future(stream.result())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not result.done():
            result.cancel()
            served.engine.abort(stream.id)
    return result.result() if result.done() and not result.cancelled() else None


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
