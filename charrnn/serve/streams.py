"""The reading end of a request to the engine: what a reader (the web app, a test, a notebook)
gets back from `Engine.add_request`, and how the engine's thread hands text over to it.

The engine thread appends `Delta`s to a `RequestStream` and marks its end; `wake_readers`
then wakes the readers with one call into each event loop. A reader merges whatever arrived
since its last read, so a slow reader gets fewer, larger deltas rather than a backlog.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from dataclasses import dataclass

# Why a sample ended.
LENGTH = "length"  # it generated `length` characters
STOP = "stop"  # it wrote the stop text
CANCELLED = "cancelled"  # the caller aborted the request
SHUTDOWN = "shutdown"  # the server stopped while it was running or queued
ERROR = "error"  # the model failed (see Outcome.error)


@dataclass
class Delta:
    """What a request generated since the last read: each sample's new characters."""

    texts: list[str]
    logprobs: list[list[float]] | None = None  # per sample, one per new character, if asked

    @property
    def chars(self) -> int:
        return sum(map(len, self.texts))


@dataclass
class Outcome:
    """A finished request: the whole text of each sample and why it ended."""

    texts: list[str]
    logprobs: list[list[float]] | None
    finish_reasons: list[str]
    prime_chars: int  # characters of the prime the model read (after normalisation)
    error: str | None = None  # what went wrong, when a reason is ERROR

    @property
    def generated_chars(self) -> int:
        return sum(map(len, self.texts))


class RequestStream:
    """The reading end of one request, read on the event loop that added it.

    The engine thread appends deltas and marks the end; the reader merges whatever arrived
    since its last read, so a slow reader gets fewer, larger deltas rather than a backlog.
    """

    def __init__(self, request_id: str, samples: int, logprobs: bool, prime_chars: int,
                 loop: asyncio.AbstractEventLoop):
        self.id = request_id
        self.samples = samples
        self.prime_chars = prime_chars
        self._loop = loop
        self._ready = asyncio.Event()
        self._pending: collections.deque[Delta] = collections.deque()  # filled by the engine
        self._texts: list[list[str]] = [[] for _ in range(samples)]
        self._logprobs: list[list[float]] | None = [[] for _ in range(samples)] \
            if logprobs else None
        self._reasons: list[str] = []
        self._error: str | None = None
        self._ended = False  # set by the engine after its last delta
        self._pause: asyncio.Event | None = None  # set to end `pause` early

    # ---- the reader's side (event loop) ---------------------------------------------------
    @property
    def finished(self) -> bool:
        """Whether the request has ended and every character of it has been read."""
        return self._ended and not self._pending

    async def next_delta(self, timeout: float | None = None) -> Delta | None:
        """Everything generated since the last call, as one Delta (waiting for some if there
        is none yet); an empty Delta if `timeout` seconds pass first; None once the request
        has ended and all of it was read."""
        while not self._pending:
            if self._ended:
                return None
            self._ready.clear()
            if self._pending or self._ended:  # arrived between the check and the clear
                continue
            if timeout is None:
                await self._ready.wait()
            else:
                try:
                    await asyncio.wait_for(self._ready.wait(), timeout)
                except asyncio.TimeoutError:
                    return Delta([""] * self.samples,
                                 [[] for _ in range(self.samples)] if self._logprobs else None)
        return self._take()

    async def pause(self, seconds: float) -> None:
        """Wait `seconds`, or less if the request ends meanwhile: a reader that spaces out its
        reads still hears of the end at once (its client's next request waits on it)."""
        if self._ended:
            return
        self._pause = asyncio.Event()
        timer = self._loop.call_later(seconds, self._pause.set)
        try:
            await self._pause.wait()
        finally:
            timer.cancel()
            self._pause = None

    def _take(self) -> Delta:
        parts = [self._pending.popleft() for _ in range(len(self._pending))]
        texts = ["".join(p.texts[i] for p in parts) for i in range(self.samples)]
        for i, text in enumerate(texts):
            self._texts[i].append(text)
        logprobs = None
        if self._logprobs is not None:
            logprobs = [[lp for p in parts for lp in p.logprobs[i]] for i in range(self.samples)]
            for i, values in enumerate(logprobs):
                self._logprobs[i].extend(values)
        return Delta(texts, logprobs)

    def __aiter__(self) -> AsyncIterator[Delta]:
        return self._deltas()

    async def _deltas(self) -> AsyncIterator[Delta]:
        while (delta := await self.next_delta()) is not None:
            yield delta

    async def result(self) -> Outcome:
        """Wait for the end (reading whatever is left) and return the whole outcome."""
        while await self.next_delta() is not None:
            pass
        return self.outcome()

    def outcome(self) -> Outcome:
        """The outcome of a finished request (read to its end)."""
        if not self.finished:
            raise RuntimeError(f"request {self.id} has not finished")
        return Outcome(["".join(t) for t in self._texts], self._logprobs, list(self._reasons),
                       self.prime_chars, self._error)

    # ---- the engine's side (any thread; readers are woken by `wake_readers`) -------------------
    def _put(self, delta: Delta) -> None:
        self._pending.append(delta)

    def _end(self, reasons: list[str], error: str | None = None) -> None:
        self._reasons = reasons
        self._error = error
        self._ended = True


def _set_ready(streams: list[RequestStream]) -> None:
    for stream in streams:
        stream._ready.set()
        if stream._ended and stream._pause is not None:
            stream._pause.set()


def wake_readers(streams: list[RequestStream]) -> None:
    """Wake the readers of these streams: one call into each event loop, whatever the
    number of streams."""
    by_loop: dict[asyncio.AbstractEventLoop, list[RequestStream]] = {}
    for stream in streams:
        by_loop.setdefault(stream._loop, []).append(stream)
    for loop, group in by_loop.items():
        try:
            loop.call_soon_threadsafe(_set_ready, group)
        except RuntimeError:  # the loop has closed: nobody is reading any more
            pass
