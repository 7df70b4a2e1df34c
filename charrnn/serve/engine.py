"""The batching engine: one generation loop per model, stepping every running request together.

It knows nothing of HTTP. A caller on an asyncio event loop (the web app, a test, a notebook)
calls `add_request(id, prime, params)` and reads the `RequestStream` it returns: the
characters each sample generated since the last read, then the outcome. `abort(id)` ends a
request at the next step.

One background thread per model runs the loop (continuous batching):
- a new request reads its prime in one call and joins the batch at the next step; a prime
  longer than sample.PRIME_PIECE is read one piece at a time between hand-offs instead (the
  waiting primes in turn, and in at most PRIME_SHARE of the time while the batch has rows),
  so that it holds the others' text a few milliseconds at a time, never for the whole read;
- every step draws each row's next character by the row's own rules and the request's own
  random numbers (see sample.py), so a request's text depends only on its seed and options,
  never on who else is in the batch: with a seed it is what `charrnn sample` prints;
- a request whose samples are all done (length reached, stop text written, aborted) leaves
  the batch at once, and a queued one takes its rows.

Between hand-offs the loop runs up to FLUSH_STEPS steps (or FLUSH_SECONDS, and less when a
request arrives, leaves or reaches its length). A hand-off copies the window's characters off
the device once, appends each request's share to its stream and wakes the readers with one
call into their event loop: the cost of handing text over grows with the hand-offs, not with
the characters or the readers, and the loop never waits for an event loop.

The batch holds at most `max_streams` rows (a request takes `num_samples` of them); beyond it
requests queue, at most `max_queue` of them, and beyond that `add_request` raises Overloaded.
Queued requests take turns by client: the next to start is the earliest of the client holding
the fewest rows (one client's backlog does not hold back everyone else's requests), and a
named client may hold at most CLIENT_QUEUE_SHARE of the queue's places (its backlog cannot
fill the queue and turn everyone else away).
Beam search (deterministic, its texts known only at the end) runs outside the batch, on one
worker thread, in at most BEAM_SHARE of the time while any engine of the process generates;
queued searches also take turns by client, and share their queue by client alike.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from charrnn import devices, speed
from charrnn.errors import Cancelled, Overloaded, ShuttingDown, UsageError
from charrnn.sample import (
    PrimeReading,
    Sampler,
    SampleSettings,
    StopWatch,
    Streams,
    beam_search,
    draw_uniforms,
    new_generator,
)
from charrnn.serve.streams import (
    CANCELLED,
    ERROR,
    LENGTH,
    SHUTDOWN,
    STOP,
    Delta,
    Outcome,  # noqa: F401 - the engine's answers: importable from here as before
    RequestStream,
    wake_readers,
)

log = logging.getLogger(__name__)

FLUSH_STEPS = 32  # steps between hand-offs at most (each hand-off syncs with the device)
FLUSH_SECONDS = 0.02  # and at most this long, so text keeps flowing in a large, slow batch
# Random numbers are drawn for up to this many steps ahead in one call (one call per request
# per window cost 3% of a 64-stream batch's time); a request's are the same in any blocks.
DRAW_AHEAD = 512
# While others generate, long primes are read in at most this share of the loop's time: with
# a piece after every hand-off, 10,000-character primes sent back to back left 8 streaming
# clients about half their speed (9,300 against 17,500 chars/s); with this share 74-96%.
PRIME_SHARE = 0.25
# Likewise a beam search, on its own thread: one client sending searches (32 beams, 1,000
# characters) back to back left 8 streaming clients a quarter of their speed (the search's
# Python work between its small steps holds the interpreter lock that every model's loop
# needs). Between steps it waits three times as long as the step took, at most MAX_BEAM_PAUSE.
BEAM_SHARE = 0.25
MAX_BEAM_PAUSE = 1.0
# Clients whose last search's start is remembered, to give them their turn after others'.
BEAM_CLIENTS_KEPT = 1024
# The share of the queue's places (and of the beam searches' queue) one named client may hold.
# Without it one client sending requests as fast as it could filled the queue, and every other
# client got 503 until the backlog drained; with it the other half stays theirs.
CLIENT_QUEUE_SHARE = 0.5
RETRY_AFTER = 1  # seconds a refused caller should wait: rows free up within about that
NOT_FINITE = ("the model's scores are not numbers (NaN or inf): its weights are damaged or "
              "its training diverged; serve another checkpoint")

# Every engine of the process: a beam search yields to the batch of any of them.
_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()
_ENGINES_LOCK = threading.Lock()


def _any_generating() -> bool:
    with _ENGINES_LOCK:
        return any(engine._active for engine in _ENGINES)


@dataclass(frozen=True)
class GenerationParams:
    """What a request asks for besides its prime."""

    settings: SampleSettings = field(default_factory=SampleSettings)
    stop: str | None = None  # each sample ends at the first stop text it completes (kept)
    logprobs: bool = False  # also return each character's log-probability


class _Request:
    """The engine's record of one request: its rows, random numbers and stop watches."""

    def __init__(self, request_id: str, prime: str, prime_ids: tuple[int, ...],
                 params: GenerationParams, stream: RequestStream, normalized_prime: str,
                 client: str | None):
        self.id = request_id
        self.client = client  # who sent it (an address), for a fair turn in the queue
        self.prime = prime
        self.prime_ids = prime_ids  # as the model reads it (Sampler.start_ids)
        self.params = params
        self.stream = stream
        self.samples = params.settings.num_samples
        self.steps_left = params.settings.length
        self.reasons: list[str | None] = [None] * self.samples
        self.live = list(range(self.samples))  # its samples still in the batch, in row order
        self.live_index: torch.Tensor | None = None  # the same as a tensor; None: all of them
        self.watches = [StopWatch(params.stop, normalized_prime) for _ in range(self.samples)] \
            if params.stop is not None else None
        self.generator: torch.Generator | None = None  # made when it joins, on the device
        self.drawn: torch.Tensor | None = None  # (steps, samples) random numbers drawn ahead
        self.next_step = 0  # the row of `drawn` the next step takes
        self.aborted = False
        self.reserved = False  # its rows count in Engine._reserved_rows

    def uniforms(self, steps: int, device: torch.device) -> torch.Tensor:
        """The next `steps` steps' random numbers for its live rows, (steps, live rows).

        Every step uses `samples` numbers, sample i taking the i-th, however many others have
        finished (their numbers are skipped): the rule that makes the text independent of the
        batch. Numbers are drawn ahead in blocks; `used(steps)` marks how many were taken.
        """
        if self.drawn is None or self.next_step + steps > self.drawn.shape[0]:
            ahead = max(steps, min(self.steps_left, DRAW_AHEAD))
            fresh = draw_uniforms(self.generator, ahead, self.samples, device)
            self.drawn = fresh if self.drawn is None \
                else torch.cat([self.drawn[self.next_step:], fresh])
            self.next_step = 0
        block = self.drawn[self.next_step:self.next_step + steps]
        return block if self.live_index is None else block[:, self.live_index]

    def used(self, steps: int) -> None:
        self.next_step += steps

    def keep(self, live: list[int], device: torch.device) -> None:
        self.live = live
        self.live_index = None if len(live) == self.samples \
            else torch.tensor(live, dtype=torch.long, device=device)

    def finish(self, reason: str, error: str | None = None) -> None:
        """End every sample still running with `reason`, and tell the reader."""
        reasons = [r if r is not None else reason for r in self.reasons]
        self.stream._end(reasons, error)


class Engine:
    """Continuous batching for one model: `start()`, then `add_request` and `abort` from an
    asyncio event loop; `shutdown()` ends every request, `close()` waits for the thread."""

    def __init__(self, sampler: Sampler, *, max_streams: int = 64, max_queue: int = 256,
                 max_length: int = 10_000, name: str = "model", threads: int | None = None):
        """`threads`: the torch (CPU) threads of the engine's thread; None keeps what a new
        thread gets from torch. See `devices.serving_threads` for a good number: on a CPU,
        a thread that ran the model with several threads before (a notebook's main thread)
        can make the engine's own threads several times slower.

        Beam search runs on one thread of its own with one torch thread, so that it never
        forms a second team of OpenMP threads beside the engine's."""
        if max_streams < 1 or max_queue < 0 or max_length < 0 \
                or (threads is not None and threads < 1):
            raise ValueError("max_streams must be >= 1, max_queue and max_length >= 0, "
                             "threads >= 1")
        self.sampler = sampler
        self.vocab = sampler.vocab
        self.device = sampler.device
        self.max_streams = max_streams
        self.max_queue = max_queue
        self.max_length = max_length
        self.name = name
        self.threads = threads
        self._stepper = sampler.stepper()
        # Shared between the callers' thread and the engine thread, under the lock.
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the engine waits on it when idle
        self._requests: dict[str, _Request] = {}  # every request not yet ended
        self._arrivals: collections.deque[_Request] = collections.deque()  # rows reserved
        self._queue: collections.deque[_Request] = collections.deque()  # waiting for rows
        self._aborts: collections.deque[str] = collections.deque()
        self._reserved_rows = 0  # rows of the batch plus those of the arrivals
        self._client_rows: collections.Counter[str | None] = collections.Counter()  # of those
        self._stopping = False
        # The engine thread's own.
        self._active: list[_Request] = []  # requests in the batch, in row order
        # Long primes being read, each with the requests waiting for it, in turn.
        self._reading: dict[tuple[int, ...], tuple[PrimeReading, list[_Request]]] = {}
        self._next_piece_at = 0.0  # time.monotonic() from which the next piece may be read
        self._streams: Streams | None = None  # their rows
        self._thread: threading.Thread | None = None
        self._beams = ThreadPoolExecutor(1, thread_name_prefix=f"charrnn-beam-{name}")
        self._beams_pending = 0  # beam searches queued or running
        # Queued searches by client (clients in the order they came), and when each client's
        # last search started (a count of searches), for the last BEAM_CLIENTS_KEPT clients.
        self._beam_queues: dict[str | None, collections.deque[_Request]] = {}
        self._beam_starts: collections.OrderedDict[str | None, int] = collections.OrderedDict()
        self._beams_started = 0
        self._beam_wake = threading.Event()  # ends a beam search's pause: abort, shutdown
        with _ENGINES_LOCK:
            _ENGINES.add(self)
        self.failure: str | None = None  # set if the loop itself died (a bug)

    # ---- the callers' side ----------------------------------------------------------------
    def start(self) -> Engine:
        """Start the generation loop's thread; returns the engine (Engine(sampler).start())."""
        self._thread = threading.Thread(target=self._run, name=f"charrnn-engine-{self.name}",
                                        daemon=True)
        self._thread.start()
        return self

    @property
    def healthy(self) -> bool:
        """Whether the engine can take and generate requests."""
        return (self._thread is not None and self._thread.is_alive() and not self._stopping
                and self.failure is None)

    def load(self) -> dict[str, int]:
        """How busy it is: rows generating (or about to), requests queued, beams pending."""
        return {"rows": self._reserved_rows, "queued": len(self._queue),
                "beams": self._beams_pending}

    def add_request(self, request_id: str, prime: str, params: GenerationParams,
                    client: str | None = None) -> RequestStream:
        """Queue a request; read its text from the returned stream on this event loop.

        `client` names who sent it (a server passes the address): while requests queue, the
        next to start is the earliest of the client holding the fewest rows, so that one
        client's backlog does not hold back everyone else's requests.

        Raises UsageError for options the model cannot honour, Overloaded when the batch and
        the queue are full, ShuttingDown once `shutdown()` was called.
        """
        loop = asyncio.get_running_loop()
        settings = params.settings
        settings.validate(self.vocab)
        if settings.length > self.max_length:
            raise UsageError(f"length must be at most {self.max_length}, not {settings.length}")
        if settings.beam is None and settings.num_samples > self.max_streams:
            raise UsageError(f"num_samples must be at most {self.max_streams} (the rows of the "
                             f"batch), not {settings.num_samples}")
        # Characters the model lacks: a UsageError naming them. The ids are read in the loop.
        prime_ids = tuple(self.sampler.start_ids(self.sampler.encode_prime(prime)))
        stop = self.sampler.prepare_stop(params.stop) if params.stop is not None else None
        params = GenerationParams(settings, stop, params.logprobs)
        normalized = self.vocab.normalize(prime)
        stream = RequestStream(request_id, settings.num_samples, params.logprobs,
                               len(normalized), loop)
        request = _Request(request_id, prime, prime_ids, params, stream, normalized, client)
        with self._lock:
            if self._stopping:
                raise ShuttingDown(f"model {self.name} is shutting down")
            if self._thread is None:  # its requests would wait for ever
                raise UsageError(f"the engine of model {self.name} is not started: call its "
                                 "start() first")
            if request_id in self._requests:
                raise ValueError(f"request id {request_id!r} is already in use")
            if settings.beam is not None:
                self._add_beam_locked(request)
                return stream
            if not self._queue and \
                    self._reserved_rows + request.samples <= self.max_streams:
                self._reserve_locked(request)
            elif len(self._queue) >= self.max_queue:
                raise Overloaded(f"model {self.name} is generating {self._reserved_rows} "
                                 f"streams with {len(self._queue)} requests queued; try again "
                                 "shortly", retry_after=RETRY_AFTER)
            else:
                self._check_share_locked(client, self._queue, "requests")
                self._queue.append(request)
            self._requests[request_id] = request
            self._work.notify()
        return stream

    def abort(self, request_id: str) -> None:
        """End a request at the next step (its samples end with CANCELLED); unknown or
        finished ids are ignored."""
        with self._lock:
            request = self._requests.get(request_id)
            if request is None or request.aborted:
                return
            request.aborted = True
            if request in self._queue:  # never started: ends here and now
                self._queue.remove(request)
                self._requests.pop(request_id)
                request.finish(CANCELLED)
                wake_readers([request.stream])
                return
            if request.params.settings.beam is None:
                self._aborts.append(request_id)
                self._work.notify()
            else:
                self._beam_wake.set()

    def shutdown(self) -> None:
        """End every running and queued request at the next step (SHUTDOWN) and refuse new
        ones; the text generated so far is delivered. Safe to call more than once."""
        with self._lock:
            self._stopping = True
            self._work.notify()
        self._beam_wake.set()

    def close(self, timeout: float | None = 10.0) -> None:
        """Shut down and wait for the loop and the beam worker to end."""
        self.shutdown()
        if self._thread is not None:
            self._thread.join(timeout)
        self._beams.shutdown(wait=True, cancel_futures=True)
        with self._lock:  # beam searches cancelled before they started
            left = list(self._requests.values())
        self._end(left, SHUTDOWN)

    # ---- beam search, outside the batch -------------------------------------------------------
    def _add_beam_locked(self, request: _Request) -> None:
        if self._beams_pending > self.max_queue:  # one running, max_queue waiting
            raise Overloaded(f"model {self.name} has {self._beams_pending} beam searches "
                             "waiting; try again shortly", retry_after=RETRY_AFTER)
        self._check_share_locked(request.client, self._beam_queues.get(request.client, ()),
                                 "beam searches")
        self._beams_pending += 1
        self._requests[request.id] = request
        self._beam_queues.setdefault(request.client, collections.deque()).append(request)
        self._beams.submit(self._run_next_beam)  # one task per search; each takes the next

    def _check_share_locked(self, client: str | None, queued: Iterable[_Request],
                            what: str) -> None:
        """Raise Overloaded if a named `client` already holds its share of a queue's places
        (`queued`: the queue, or that client's own queued requests)."""
        if client is None:  # a library caller with no clients to be fair between
            return
        share = max(1, int(self.max_queue * CLIENT_QUEUE_SHARE))
        held = sum(request.client == client for request in queued)
        if held >= share:
            raise Overloaded(f"model {self.name} already has {what} of yours queued: {held}, "
                             f"the most one client may have waiting; send more as these "
                             "finish", retry_after=RETRY_AFTER)

    def _run_next_beam(self) -> None:
        """Run the queued search whose turn it is: the next of the client whose last search
        started longest ago (or never), so that one client's backlog does not hold back
        everyone else's searches; each client's own in the order they came."""
        with self._lock:
            if not self._beam_queues:
                return
            client = min(self._beam_queues, key=lambda c: self._beam_starts.get(c, -1))
            queued = self._beam_queues[client]
            request = queued.popleft()
            if not queued:
                del self._beam_queues[client]
            if not request.aborted:  # one its client gave up on ends now, not a turn
                self._beams_started += 1
                self._beam_starts[client] = self._beams_started
                self._beam_starts.move_to_end(client)
                if len(self._beam_starts) > BEAM_CLIENTS_KEPT:
                    self._beam_starts.popitem(last=False)
        self._run_beam(request)

    def _run_beam(self, request: _Request) -> None:
        try:
            if request.aborted or self._stopping:
                request.finish(CANCELLED if request.aborted else SHUTDOWN)
                return
            step_started: float | None = None  # the clock starts after the prime is read

            def between_steps() -> bool:  # paces the search; True: stop it
                nonlocal step_started
                if request.aborted or self._stopping:
                    return True
                if step_started is not None and _any_generating():
                    took = time.monotonic() - step_started
                    self._beam_wake.wait(min(took * (1 / BEAM_SHARE - 1), MAX_BEAM_PAUSE))
                    self._beam_wake.clear()  # (an abort of a queued search woke it: go on)
                step_started = time.monotonic()
                return request.aborted or self._stopping

            # One thread, and the process's count back after: in this torch build a count set
            # in any thread becomes the one every new thread starts with (a notebook's training
            # ran on one thread after a single beam search).
            with speed.using_threads(1):
                found = beam_search(self.sampler, request.params.settings, request.prime,
                                    request.params.stop, cancelled=between_steps)
            texts, logprobs = [], []
            for i, sample in enumerate(found):
                watch = request.watches[i] if request.watches else None
                if watch is not None:
                    watch.cut(sample.text)  # a text that completed the stop text ended there
                request.reasons[i] = STOP if watch is not None and watch.ended else LENGTH
                texts.append(sample.text)
                logprobs.append(sample.logprobs)
            request.stream._put(Delta(texts, logprobs if request.params.logprobs else None))
            request.finish(LENGTH)
        except Cancelled:  # its client left, or the server is stopping
            request.finish(CANCELLED if request.aborted else SHUTDOWN)
        except Exception as exc:  # noqa: BLE001 - a failed search fails its request, not the server
            log.exception("beam search failed")
            request.finish(ERROR, f"beam search failed: {exc}")
        finally:
            with self._lock:
                self._beams_pending -= 1
                self._requests.pop(request.id, None)
            wake_readers([request.stream])

    # ---- the loop (engine thread) -------------------------------------------------------------
    def _run(self) -> None:
        # The count is given back when the loop ends (see the beam search's).
        threads = contextlib.nullcontext() if self.threads is None \
            else speed.using_threads(self.threads)
        try:
            with threads, torch.inference_mode():
                while self._between_windows():
                    try:
                        if self._active:
                            self._window()
                    except Exception as exc:  # noqa: BLE001 - fail the batch, keep serving
                        log.exception("generation failed")
                        self._fail_all(f"generation failed: {exc}")
        except BaseException as exc:
            self.failure = f"{type(exc).__name__}: {exc}"
            log.exception("the generation loop of %s died", self.name)
            with self._lock:
                self._stopping = True
                left = [r for r in self._requests.values() if r.params.settings.beam is None]
            self._end(left, ERROR, f"the generation loop failed: {self.failure}")
            raise

    def _between_windows(self) -> bool:
        """Let aborted requests leave and new ones join; wait while there is nothing to do.
        False once the engine is stopping (every request then ended)."""
        with self._lock:
            while not (self._active or self._reading or self._arrivals or self._aborts
                       or self._stopping or self._next_queued_locked()):
                self._work.wait()
            aborts = set(self._aborts)
            self._aborts.clear()
            stopping = self._stopping
        if stopping:
            with self._lock:
                left = [*self._arrivals, *self._queue]
                self._arrivals.clear()
                self._queue.clear()
            reading = [r for _, requests in self._reading.values() for r in requests]
            self._end([*self._active, *reading, *left], SHUTDOWN)
            self._active, self._streams, self._reading = [], None, {}
            return False
        if aborts:  # first, so that their rows go to the queue's requests at once
            self._drop([r for r in self._active if r.id in aborts], CANCELLED)
            cancelled = []
            for key, (_, requests) in list(self._reading.items()):
                cancelled += [r for r in requests if r.id in aborts]
                requests[:] = [r for r in requests if r.id not in aborts]
                if not requests:
                    del self._reading[key]
            self._end(cancelled, CANCELLED)  # last: it wakes their readers
        with self._lock:
            while (request := self._next_queued_locked()) is not None:
                self._queue.remove(request)
                self._reserve_locked(request)
            arrivals = list(self._arrivals)
            self._arrivals.clear()
        self._end([r for r in arrivals if r.id in aborts], CANCELLED)
        arrivals = [r for r in arrivals if r.id not in aborts]
        if arrivals:
            self._join(arrivals)
        if self._reading and (not self._active or time.monotonic() >= self._next_piece_at):
            self._read_piece()
        return True

    def _next_queued_locked(self) -> _Request | None:
        """The queued request to start now, if any: the earliest of the client holding the
        fewest rows, when its rows fit. One that does not fit waits, and the others with it,
        so a large request is never passed over for ever."""
        chosen, fewest = None, 0
        for request in self._queue:
            rows = self._client_rows[request.client]
            if chosen is None or rows < fewest:
                chosen, fewest = request, rows
                if rows == 0:
                    break
        if chosen is None or self._reserved_rows + chosen.samples > self.max_streams:
            return None
        return chosen

    def _reserve_locked(self, request: _Request) -> None:
        """Count a request's rows in the batch; it joins at the next step."""
        self._reserved_rows += request.samples
        self._client_rows[request.client] += request.samples
        request.reserved = True
        self._arrivals.append(request)

    def _join(self, arrivals: list[_Request]) -> None:
        """Read the new requests' primes and add their rows to the batch; long primes go to
        `_read_piece`."""
        self._end([r for r in arrivals if r.steps_left == 0], LENGTH)  # nothing to generate
        joining = []
        for request in arrivals:
            if request.steps_left == 0:
                continue
            key = request.prime_ids
            if key in self._reading:  # the same long prime is being read: its end serves both
                self._reading[key][1].append(request)
                continue
            reading = PrimeReading(self.sampler, key)
            if reading.pieces > 1:
                self._reading[key] = (reading, [request])
            else:
                joining.append(request)
        if not joining:
            return
        try:
            started = self.sampler.start_from_ids([(r.params.settings, r.prime_ids)
                                                   for r in joining])
        except Exception as exc:  # noqa: BLE001 - the new requests fail, the batch goes on
            log.exception("priming failed")
            self._end(joining, ERROR, f"reading the prime failed: {exc}")
            return
        self._add_rows(joining, started)

    def _read_piece(self) -> None:
        """Read one piece of the long prime whose turn it is; once it is read to the end, its
        requests join the batch. One piece per round, however many primes are being read (the
        batch waits one piece's time), and the next not before PRIME_SHARE of the time since
        has gone to reading."""
        key, (reading, requests) = next(iter(self._reading.items()))
        del self._reading[key]
        try:
            started_at = time.monotonic()
            reading.read_piece()
            devices.synchronize(self.device)  # an accelerator's piece takes its time here
            took = time.monotonic() - started_at
            self._next_piece_at = started_at + took / PRIME_SHARE
            if not reading.done:
                self._reading[key] = (reading, requests)  # to the back: the others' turn
                return
            started = [self.sampler.rows_from(r.params.settings, reading.logits, reading.state)
                       for r in requests]
        except Exception as exc:  # noqa: BLE001 - its requests fail, the batch goes on
            log.exception("priming failed")
            self._end(requests, ERROR, f"reading the prime failed: {exc}")
            return
        self._add_rows(requests, started)

    def _add_rows(self, requests: list[_Request], started: list[Streams]) -> None:
        """Requests whose primes were read join the batch, each with its rows."""
        for request in requests:
            request.generator = new_generator(request.params.settings.seed, self.device)
        parts = ([self._streams] if self._streams is not None else []) + started
        self._streams = Streams.join(parts) if len(parts) > 1 else parts[0]
        self._active.extend(requests)

    def _window(self) -> None:
        """Step the batch until a hand-off is due, then hand the characters over."""
        active, device, stepper, streams = self._active, self.device, self._stepper, self._streams
        steps = min(FLUSH_STEPS, min(r.steps_left for r in active))
        with_logprobs = any(r.params.logprobs for r in active)
        uniforms = active[0].uniforms(steps, device) if len(active) == 1 \
            else torch.cat([r.uniforms(steps, device) for r in active], dim=1)  # (steps, B)
        ids, logprobs = [], []
        deadline = time.monotonic() + FLUSH_SECONDS
        for step in range(steps):
            drawn, logp = streams.advance(stepper, uniforms[step], with_logprobs)
            ids.append(drawn)
            logprobs.append(logp)
            # Arrivals and aborts are read without the lock: a stale look costs one step.
            if self._arrivals or self._aborts or self._stopping or time.monotonic() > deadline:
                break
        for request in active:
            request.used(len(ids))
        self._hand_off(ids, logprobs if with_logprobs else None)

    def _hand_off(self, ids: list[torch.Tensor], logprobs: list[torch.Tensor] | None) -> None:
        """Give each request its new characters; requests whose samples are all done leave."""
        steps = len(ids)
        rows = torch.stack(ids, 1).tolist()  # (B, steps): the window's one device sync
        values = torch.stack(logprobs, 1).tolist() if logprobs is not None else None
        finite = torch.isfinite(self._streams.logits[:, 1:]).all(dim=1).tolist()  # (B,)
        keep_rows: list[int] = []
        staying, ended, failed = [], [], []
        row = 0
        for request in self._active:
            request.steps_left -= steps
            texts = [""] * request.samples
            lps = [[] for _ in range(request.samples)] if request.params.logprobs else None
            live, broken = [], False
            for sample in request.live:
                piece = self.vocab.decode(rows[row])
                watch = request.watches[sample] if request.watches else None
                if watch is not None:
                    piece = piece[:watch.cut(piece)]
                texts[sample] = piece
                if lps is not None:
                    lps[sample] = values[row][:len(piece)]
                broken |= not finite[row]
                if watch is not None and watch.ended:
                    request.reasons[sample] = STOP
                elif request.steps_left == 0:
                    request.reasons[sample] = LENGTH
                else:
                    live.append(sample)
                row += 1
            request.stream._put(Delta(texts, lps))
            if broken:
                failed.append(request)
            elif live:
                first = row - len(request.live)
                keep_rows.extend(first + request.live.index(s) for s in live)
                if len(live) != len(request.live):
                    request.keep(live, self.device)
                staying.append(request)
            else:
                ended.append(request)
        if len(keep_rows) != row:
            self._streams = self._streams.select(
                torch.tensor(keep_rows, dtype=torch.long, device=self.device)) \
                if keep_rows else None
        self._active = staying
        self._end(ended, LENGTH, wake=False)
        self._end(failed, ERROR, NOT_FINITE, wake=False)
        wake_readers([r.stream for r in (*staying, *ended, *failed)])

    def _drop(self, requests: list[_Request], reason: str) -> None:
        """Take requests out of the batch between windows (aborted ones)."""
        if not requests:
            return
        leaving = {id(r) for r in requests}
        keep_rows, row = [], 0
        for request in self._active:
            if id(request) not in leaving:
                keep_rows.extend(range(row, row + len(request.live)))
            row += len(request.live)
        self._active = [r for r in self._active if id(r) not in leaving]
        self._streams = self._streams.select(
            torch.tensor(keep_rows, dtype=torch.long, device=self.device)) if keep_rows else None
        self._end(requests, reason)

    def _fail_all(self, error: str) -> None:
        self._end(self._active, ERROR, error)
        self._active, self._streams = [], None

    def _end(self, requests: Iterable[_Request], reason: str, error: str | None = None,
             wake: bool = True) -> None:
        """Finish requests (their remaining samples with `reason`) and free their rows."""
        requests = list(requests)
        if not requests:
            return
        for request in requests:
            request.finish(reason, error)
        with self._lock:
            for request in requests:
                self._requests.pop(request.id, None)
                if request.reserved:
                    self._reserved_rows -= request.samples
                    self._client_rows[request.client] -= request.samples
                    if not self._client_rows[request.client]:
                        del self._client_rows[request.client]
                    request.reserved = False
        if wake:
            wake_readers([r.stream for r in requests])
