"""The batching engine on its own: no HTTP, an asyncio loop reading its streams."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from charrnn.checkpoint import load_model
from charrnn.errors import Cancelled, Overloaded, ShuttingDown, UsageError
from charrnn.sample import Sampler, SampleSettings, beam_search
from charrnn.serve.engine import Engine, GenerationParams
from charrnn.serve.streams import CANCELLED, ERROR, LENGTH, SHUTDOWN, STOP

ENDLESS = 1_000_000  # characters: a request that runs until the test ends it, on any machine


@pytest.fixture(scope="module")
def sampler(tiny_run) -> Sampler:
    model, vocab, _ = load_model(tiny_run)
    return Sampler(model, vocab)


@pytest.fixture
def make_engine(sampler):
    """Started engines with the limits asked for (on the tiny run's model unless another
    sampler is given), closed after the test."""
    made = []

    def make(other: Sampler | None = None, **limits) -> Engine:
        made.append(Engine(other or sampler, **{"max_length": ENDLESS, **limits}).start())
        return made[-1]

    yield make
    for engine in made:
        engine.close()


@pytest.fixture
def engine(make_engine):
    return make_engine(max_streams=64, max_queue=8)


async def until(condition, seconds: float = 10.0) -> None:
    """Wait for the engine thread to make `condition()` true (failing after `seconds`)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the engine did not get there in time"
        await asyncio.sleep(0.005)


def params(length=100, stop=None, logprobs=False, **settings) -> GenerationParams:
    return GenerationParams(SampleSettings(length=length, **settings), stop, logprobs)


def test_requests_batched_together_get_what_each_gets_alone(engine, sampler):
    """21 requests with mixed options step as one batch; each returns exactly the text (and
    log-probabilities) that the sampler, the same as `charrnn sample`, gives it alone."""
    asked = [(f"r{i}", "The " if i % 2 else "", params(
        length=120 + 7 * i, temperature=[0.8, 1.3, 0.0][i % 3], seed=i,
        num_samples=1 + i % 3, top_k=5 if i % 4 == 0 else None,
        top_p=0.9 if i % 5 == 1 else None, stop="\n" if i % 6 == 0 else None,
        logprobs=True)) for i in range(21)]

    async def together():
        streams = [engine.add_request(rid, prime, p) for rid, prime, p in asked]
        return await asyncio.gather(*(s.result() for s in streams))

    outcomes = asyncio.run(together())
    for (_, prime, p), outcome in zip(asked, outcomes, strict=True):
        alone = sampler.samples(p.settings, prime, p.stop, with_logprobs=True)
        assert outcome.texts == [s.text for s in alone]
        for mine, theirs in zip(outcome.logprobs, (s.logprobs for s in alone), strict=True):
            assert mine == pytest.approx(theirs, abs=1e-4)
        assert outcome.prime_chars == len(prime)
        for text, reason in zip(outcome.texts, outcome.finish_reasons, strict=True):
            assert reason == (STOP if p.stop and text.endswith(p.stop) else LENGTH)
    assert engine.load() == {"rows": 0, "queued": 0, "beams": 0}
    assert not engine._requests  # nothing kept once answered


def test_the_stream_hands_over_text_as_it_is_written(engine):
    async def read():
        stream = engine.add_request("a", "The ", params(length=300, seed=1))
        pieces = [delta.texts[0] async for delta in stream]
        return pieces, stream.outcome()

    pieces, outcome = asyncio.run(read())
    assert len(pieces) > 1  # several hand-offs, not one at the end
    assert "".join(pieces) == outcome.texts[0] and len(outcome.texts[0]) == 300


def test_an_abort_frees_the_rows_at_the_next_step(engine):
    async def scenario():
        stream = engine.add_request("long", "", params(length=ENDLESS, num_samples=3, seed=2))
        first = await stream.next_delta()
        assert engine.load()["rows"] == 3
        engine.abort("long")
        outcome = await asyncio.wait_for(stream.result(), 5)
        return first, outcome

    first, outcome = asyncio.run(scenario())
    assert first.chars > 0
    assert outcome.finish_reasons == [CANCELLED] * 3
    assert len(outcome.texts[0]) < 10_000
    assert engine.load()["rows"] == 0


def test_requests_queue_beyond_max_streams_and_are_refused_beyond_max_queue(make_engine):
    engine = make_engine(max_streams=2, max_queue=1)

    async def scenario():
        running = engine.add_request("run", "", params(length=ENDLESS, num_samples=2, seed=1))
        queued = engine.add_request("queued", "", params(length=50, seed=2))
        with pytest.raises(Overloaded) as refused:
            engine.add_request("refused", "", params(length=50))
        assert refused.value.retry_after >= 1
        await running.next_delta()
        assert engine.load()["queued"] == 1 and not queued._pending
        engine.abort("run")  # its rows free up: the queued request starts
        done = await asyncio.wait_for(queued.result(), 5)
        await running.result()
        return done

    done = asyncio.run(scenario())
    assert done.finish_reasons == [LENGTH] and len(done.texts[0]) == 50
    assert engine.load() == {"rows": 0, "queued": 0, "beams": 0}


def test_one_client_may_hold_only_its_share_of_the_queue(make_engine):
    """A client sending requests as fast as it can gets 503 once it holds half the queue's
    places; another client's requests still queue. A library caller naming no client may
    fill the queue as before."""
    engine = make_engine(max_streams=1, max_queue=4)

    async def scenario():
        endless = params(length=ENDLESS)
        running = engine.add_request("run", "", endless, client="A")
        queued = [engine.add_request(f"a{i}", "", endless, client="A") for i in range(2)]
        with pytest.raises(Overloaded) as refused:
            engine.add_request("a-over", "", endless, client="A")
        queued += [engine.add_request(f"b{i}", "", endless, client="B") for i in range(2)]
        with pytest.raises(Overloaded):  # the queue itself is full now
            engine.add_request("c0", "", endless, client="C")
        for stream in queued:
            engine.abort(stream.id)
        unnamed = [engine.add_request(f"n{i}", "", endless) for i in range(4)]
        load = engine.load()
        for stream in (running, *unnamed):
            engine.abort(stream.id)
        await asyncio.gather(*(stream.result() for stream in (running, *queued, *unnamed)))
        return refused.value, load

    refused, load = asyncio.run(scenario())
    assert "requests of yours queued: 2" in str(refused) and refused.retry_after >= 1
    assert load["queued"] == 4
    assert engine.load() == {"rows": 0, "queued": 0, "beams": 0}


def test_one_client_may_hold_only_its_share_of_the_beam_queue(make_engine):
    engine = make_engine(max_streams=4, max_queue=4)
    gate = threading.Event()
    run_beam = engine._run_beam

    def held(request) -> None:  # noqa: ANN001 - the engine's record
        gate.wait(10)  # the first search holds the worker while the others queue
        run_beam(request)

    engine._run_beam = held

    async def scenario():
        beam = GenerationParams(SampleSettings(length=5, beam=2))
        streams = [engine.add_request("a0", "", beam, client="A")]
        await until(lambda: not engine._beam_queues)  # a0 started: it holds no place
        streams += [engine.add_request(f"a{i}", "", beam, client="A") for i in (1, 2)]
        with pytest.raises(Overloaded) as refused:
            engine.add_request("a-over", "", beam, client="A")
        streams.append(engine.add_request("b0", "", beam, client="B"))
        gate.set()
        return refused.value, await asyncio.gather(*(s.result() for s in streams))

    refused, outcomes = asyncio.run(scenario())
    assert "beam searches of yours queued: 2" in str(refused)
    assert all(outcome.finish_reasons == [LENGTH] for outcome in outcomes)


def test_a_bad_setting_is_refused_and_the_engine_goes_on(engine):
    """A seed the generator cannot take (too large, a string) stopped the generation loop,
    and every later request got ShuttingDown."""

    async def scenario():
        for seed in (2**70, "7"):
            with pytest.raises(UsageError, match="seed must be"):
                engine.add_request(f"bad-{seed}", "", params(length=5, seed=seed))
        return await engine.add_request("good", "", params(length=5, seed=1)).result()

    assert asyncio.run(scenario()).finish_reasons == [LENGTH]
    assert engine.healthy


def test_an_engine_not_started_refuses_requests_instead_of_holding_them(sampler):
    engine = Engine(sampler)

    async def scenario():
        with pytest.raises(UsageError, match="not started: call its start"):
            engine.add_request("r", "", params(length=5))

    asyncio.run(scenario())
    engine.close()


def test_queued_requests_take_turns_by_client(make_engine):
    """One client's backlog does not hold back another's request: the next to start is the
    earliest of the client holding the fewest rows. A request whose rows do not fit yet is
    not passed over (it would wait for ever behind smaller ones)."""
    engine = make_engine(max_streams=2, max_queue=8)

    async def scenario():
        endless = params(length=ENDLESS)
        a_run = engine.add_request("a-run", "", endless, client="A")
        b_run = engine.add_request("b-run", "", endless, client="B")
        a_backlog = [engine.add_request(f"a{i}", "", endless, client="A") for i in range(3)]
        b_late = engine.add_request("b-late", "", endless, client="B")
        await a_run.next_delta()
        engine.abort("a-run")  # A holds no rows: its earliest queued request starts
        await a_backlog[0].next_delta()
        engine.abort("b-run")  # B holds none, A one: B's request goes before A's backlog
        await b_late.next_delta()
        still_queued = engine.load()["queued"]
        # A 2-row request first in line, then a 1-row one: with one row free, both wait.
        for request in (*a_backlog[1:], b_late):
            engine.abort(request.id)
        await until(lambda: engine.load() == {"rows": 1, "queued": 0, "beams": 0})
        big = engine.add_request("c-big", "", params(length=20, num_samples=2), client="C")
        small = engine.add_request("d-small", "", params(length=20), client="D")
        for _ in range(3):  # a few rounds of the loop
            await a_backlog[0].next_delta()
        waiting = engine.load()["queued"], list(small._pending)
        engine.abort("a0")
        outcomes = await asyncio.wait_for(asyncio.gather(big.result(), small.result()), 5)
        await asyncio.gather(a_run.result(), b_run.result(), b_late.result(),
                             *(request.result() for request in a_backlog))
        return still_queued, waiting, outcomes

    still_queued, waiting, outcomes = asyncio.run(scenario())
    assert still_queued == 2  # a1 and a2 wait while b-late generates
    assert waiting == (2, [])  # c-big and d-small queued, d-small given nothing yet
    assert [o.finish_reasons for o in outcomes] == [[LENGTH, LENGTH], [LENGTH]]
    assert engine.load() == {"rows": 0, "queued": 0, "beams": 0}


def test_a_queued_request_can_be_aborted_before_it_starts(make_engine):
    engine = make_engine(max_streams=1, max_queue=4)

    async def scenario():
        running = engine.add_request("run", "", params(length=ENDLESS))
        queued = engine.add_request("queued", "", params(length=50))
        engine.abort("queued")
        outcome = await asyncio.wait_for(queued.result(), 5)
        engine.abort("run")
        await running.result()
        return outcome

    assert asyncio.run(scenario()).finish_reasons == [CANCELLED]


def test_shutdown_ends_running_and_queued_requests_and_refuses_new_ones(make_engine):
    engine = make_engine(max_streams=1, max_queue=4)

    async def scenario():
        running = engine.add_request("run", "The ", params(length=ENDLESS))
        queued = engine.add_request("queued", "", params(length=50))
        await running.next_delta()
        engine.shutdown()
        outcomes = await asyncio.wait_for(asyncio.gather(running.result(), queued.result()), 5)
        with pytest.raises(ShuttingDown):
            engine.add_request("late", "", params())
        return outcomes

    running, queued = asyncio.run(scenario())
    assert running.finish_reasons == [SHUTDOWN] and running.texts[0]  # what was written
    assert queued.finish_reasons == [SHUTDOWN] and queued.texts == [""]
    assert not engine.healthy


def test_beam_requests_run_outside_the_batch_and_match_beam_search(engine, sampler):
    settings = SampleSettings(length=40, beam=3, num_samples=2)

    async def scenario():
        beam = engine.add_request("beam", "The ", GenerationParams(settings, " ", True))
        drawn = engine.add_request("drawn", "The ", params(length=200, seed=3))
        return await asyncio.gather(beam.result(), drawn.result())

    beamed, drawn = asyncio.run(scenario())
    best = beam_search(sampler, settings, "The ", " ")
    assert beamed.texts == [s.text for s in best]
    assert beamed.logprobs == [s.logprobs for s in best]
    assert all(r == (STOP if t.endswith(" ") else LENGTH)
               for t, r in zip(beamed.texts, beamed.finish_reasons, strict=True))
    assert len(drawn.texts[0]) == 200


def test_queued_beam_searches_take_turns_by_client(make_engine):
    """One client's backlog of searches does not hold back another's: the next to start is
    the next of the client whose last search started longest ago (or never)."""
    engine = make_engine(max_streams=4, max_queue=8)
    started, gate = [], threading.Event()
    run_beam = engine._run_beam

    def recording(request) -> None:  # noqa: ANN001 - the engine's record
        started.append(request.id)
        if len(started) == 1:
            gate.wait(10)  # the first search holds the worker while the others queue
        run_beam(request)

    engine._run_beam = recording

    async def scenario():
        beam = GenerationParams(SampleSettings(length=5, beam=2))
        streams = [engine.add_request(f"a{i}", "", beam, client="A") for i in range(3)]
        streams += [engine.add_request("b0", "", beam, client="B"),
                    engine.add_request("c0", "", beam, client="C")]
        gate.set()
        return await asyncio.gather(*(stream.result() for stream in streams))

    outcomes = asyncio.run(scenario())
    assert started == ["a0", "b0", "c0", "a1", "a2"]
    assert all(outcome.finish_reasons == [LENGTH] for outcome in outcomes)


class TimedWake(threading.Event):
    """An engine's beam wake-up that records how long each of the search's pauses lasted."""

    def __init__(self):
        super().__init__()
        self.pauses: list[float] = []

    def wait(self, timeout=None):
        started = time.monotonic()
        woken = super().wait(timeout)
        self.pauses.append(time.monotonic() - started)
        return woken


@pytest.mark.parametrize("where", ["same model", "another model"])
def test_a_beam_search_takes_its_share_of_the_time_while_others_generate(
        make_engine, where):
    """While any engine of the process has rows in its batch (the searches and every loop
    share the interpreter lock), a search pauses three times as long as each step took
    (BEAM_SHARE); with no rows anywhere it does not pause."""
    from charrnn.serve import engine as engine_module

    beams = make_engine(max_streams=8)
    batch = beams if where == "same model" else make_engine(max_streams=8)
    beams._beam_wake = wake = TimedWake()
    settings = SampleSettings(length=150, beam=4)

    async def scenario():
        batch.add_request("running", "", params(length=ENDLESS, seed=1))
        await until(lambda: batch._active)
        started = time.monotonic()
        await beams.add_request("shared", "The ", GenerationParams(settings)).result()
        shared = time.monotonic() - started, sum(wake.pauses), len(wake.pauses)
        batch.abort("running")
        await until(lambda: not batch._active)
        wake.pauses.clear()
        await beams.add_request("alone", "The ", GenerationParams(settings)).result()
        return shared, len(wake.pauses)

    (took, paused, pauses), alone = asyncio.run(scenario())
    assert pauses >= 140 and alone == 0
    searching = took - paused  # the steps, and the request's own comings and goings
    assert paused >= (1 / engine_module.BEAM_SHARE - 1) / 2 * searching  # 3x, within 2


@pytest.mark.parametrize("others", [False, True])
@pytest.mark.parametrize("how", ["abort", "shutdown"])
def test_a_beam_search_stops_part_way_when_its_client_leaves_or_the_server_stops(
        make_engine, monkeypatch, how, others):
    """A beam of 8 over a million characters would run for hours for nobody; one pausing
    for others' sake (here for up to 60 s) stops as soon."""
    from charrnn.serve import engine as engine_module

    monkeypatch.setattr(engine_module, "BEAM_SHARE", 1e-6)
    monkeypatch.setattr(engine_module, "MAX_BEAM_PAUSE", 60.0)
    engine = make_engine()

    async def scenario():
        if others:  # a running request: the search pauses after its first step
            engine.add_request("running", "", params(length=ENDLESS, seed=1))
            await until(lambda: engine._active)
        stream = engine.add_request("b", "", params(length=ENDLESS, beam=8))
        await asyncio.sleep(0.3)  # the search is running (or pausing)
        asked = time.monotonic()
        engine.abort("b") if how == "abort" else engine.shutdown()
        return await asyncio.wait_for(stream.result(), 30), time.monotonic() - asked

    outcome, took = asyncio.run(scenario())
    assert outcome.finish_reasons == [CANCELLED if how == "abort" else SHUTDOWN]
    assert took < 10
    asyncio.run(until(lambda: engine.load()["beams"] == 0))
    with pytest.raises(Cancelled):
        beam_search(engine.sampler, SampleSettings(length=10, beam=2), cancelled=lambda: True)


def test_length_zero_and_the_engines_own_limits(make_engine):
    engine = make_engine(max_streams=2, max_length=100)

    async def scenario():
        empty = await engine.add_request("zero", "The ", params(length=0)).result()
        with pytest.raises(UsageError, match="length must be at most 100"):
            engine.add_request("long", "", params(length=101))
        with pytest.raises(UsageError, match="num_samples must be at most 2"):
            engine.add_request("wide", "", params(num_samples=3))
        with pytest.raises(UsageError, match="cannot write"):
            engine.add_request("odd", "\u2603", params())
        return empty

    empty = asyncio.run(scenario())
    assert empty.texts == [""] and empty.finish_reasons == [LENGTH]


def test_a_model_with_broken_weights_fails_its_requests_and_keeps_serving(sampler, make_engine):
    broken = type(sampler.model)(sampler.model.args)
    broken.load_state_dict(sampler.model.state_dict())
    with torch.no_grad():
        broken.head.bias.fill_(float("nan"))
    engine = make_engine(Sampler(broken.eval(), sampler.vocab), max_streams=4)

    async def scenario():
        first = await engine.add_request("a", "The ", params(length=50)).result()
        second = await engine.add_request("b", "The ", params(length=50)).result()
        return first, second

    first, second = asyncio.run(scenario())
    assert first.finish_reasons == [ERROR] and "not numbers" in first.error
    assert second.finish_reasons == [ERROR]  # the engine is still answering
    assert engine.healthy


def in_a_new_thread(work):
    result = []
    thread = threading.Thread(target=lambda: result.append(work()))
    thread.start()
    thread.join()
    return result[0]


def test_the_engine_thread_takes_its_threads_and_beam_search_one(make_engine, monkeypatch):
    """Each thread sets its own torch threads, and gives the process's count back: in this
    torch build a count set in any thread is the one new threads start with (a notebook's
    training ran on one thread after a single beam search on a closed engine)."""
    from charrnn.serve import engine as engine_module

    seen = {}
    real_window, real_search = Engine._window, engine_module.beam_search

    def window(self):
        seen["engine"] = torch.get_num_threads()
        return real_window(self)

    def beam_search(*args, **kwargs):
        seen["beam"] = torch.get_num_threads()
        return real_search(*args, **kwargs)

    monkeypatch.setattr(Engine, "_window", window)
    monkeypatch.setattr(engine_module, "beam_search", beam_search)
    in_a_new_thread(lambda: torch.set_num_threads(2))  # what new threads start with: 2
    before, new_threads_before = torch.get_num_threads(), in_a_new_thread(torch.get_num_threads)
    assert new_threads_before == 2
    engine = make_engine(threads=3)

    async def scenario():
        await engine.add_request("a", "", params(length=20)).result()
        await engine.add_request("b", "", params(length=20, beam=2)).result()

    asyncio.run(scenario())
    assert seen == {"engine": 3, "beam": 1}
    engine.close()
    assert torch.get_num_threads() == before
    assert in_a_new_thread(torch.get_num_threads) == new_threads_before
    with pytest.raises(ValueError, match="threads"):
        Engine(engine.sampler, threads=0)


def test_a_slow_reader_gets_the_text_merged(engine):
    async def scenario():
        stream = engine.add_request("slow", "", params(length=400, seed=5, logprobs=True))
        while not stream._ended:
            await asyncio.sleep(0.01)
        merged = await stream.next_delta()
        assert await stream.next_delta() is None
        return merged, stream.outcome()

    merged, outcome = asyncio.run(scenario())
    assert merged.texts == outcome.texts and len(merged.logprobs[0]) == 400


def test_a_pausing_reader_hears_of_the_end_at_once(engine):
    """A reader that spaces out its reads (the server's events under load) is woken when its
    request ends, not when its pause is over: its client's next request waits on that."""
    async def scenario():
        running = engine.add_request("running", "", params(length=ENDLESS, seed=6))
        started = time.monotonic()
        await running.pause(0.2)  # the request goes on: the pause is served in full
        paused = time.monotonic() - started
        short = engine.add_request("short", "", params(length=20, seed=6))
        started = time.monotonic()
        await short.pause(60)
        ended_after = time.monotonic() - started
        engine.abort("running")
        await short.pause(60)  # already ended: returns at once
        return paused, ended_after, short._ended, await running.result()

    paused, ended_after, ended, outcome = asyncio.run(scenario())
    assert paused >= 0.19 and ended
    assert ended_after < 10  # the end of 20 characters, not the 60 s asked for
    assert outcome.finish_reasons == [CANCELLED]


@pytest.fixture
def short_pieces(monkeypatch):
    """Primes read 4 characters per call: a 400-character prime takes 100 calls."""
    from charrnn import sample as sample_module

    monkeypatch.setattr(sample_module, "PRIME_PIECE", 4)


LONG_PRIME = "The quick brown fox jumps over the lazy dog. " * 9  # 405 characters


def test_a_long_prime_is_read_between_steps_while_the_batch_generates(
        engine, sampler, short_pieces):
    """A prime of 100 pieces is read one piece between hand-offs, so a running request keeps
    receiving text meanwhile; the long one then gives what `charrnn sample` gives."""
    asked = params(length=40, seed=8, num_samples=2)

    async def scenario():
        running = engine.add_request("running", "", params(length=ENDLESS, seed=1))
        await running.next_delta()
        long = engine.add_request("long", LONG_PRIME, asked)
        received = 0  # by the running request while the long prime was read
        while not long._pending and not long._ended:
            received += (await running.next_delta(timeout=0.05)).chars
        engine.abort("running")
        return received, await long.result()

    received, outcome = asyncio.run(scenario())
    assert received >= 100  # at least a step after each piece
    assert outcome.texts == sampler.sample_text(asked.settings, LONG_PRIME)
    assert outcome.finish_reasons == [LENGTH, LENGTH] and outcome.prime_chars == len(LONG_PRIME)
    asyncio.run(until(lambda: engine.load()["rows"] == 0))  # the running one's abort too


def test_long_primes_take_at_most_their_share_of_the_loop(engine, short_pieces, monkeypatch):
    """While others generate, pieces are read in at most PRIME_SHARE of the time: after each
    piece the batch has three times as long, however fast or slow the machine."""
    from charrnn.sample import PrimeReading
    from charrnn.serve import engine as engine_module

    # Hand-offs far more often than a piece takes: with a piece after each, reading took half
    # the time here.
    monkeypatch.setattr(engine_module, "FLUSH_STEPS", 2)
    spans = []
    read_piece = PrimeReading.read_piece

    def timed(reading):
        started = time.monotonic()
        read_piece(reading)
        if reading.pieces > 1:  # the long prime's (a short one is read in one piece)
            spans.append((started, time.monotonic()))

    monkeypatch.setattr(PrimeReading, "read_piece", timed)

    async def scenario():
        engine.add_request("running", "", params(length=ENDLESS, seed=1))
        long = engine.add_request("long", LONG_PRIME, params(length=5, seed=2))
        await long.result()
        engine.abort("running")

    asyncio.run(scenario())
    assert len(spans) == 102
    after = 1 / engine_module.PRIME_SHARE - 1  # each piece followed by three times as long
    for (start, end), (next_start, _) in zip(spans[:-1], spans[1:], strict=True):
        assert next_start - end >= after * (end - start) - 1e-4


@pytest.mark.parametrize("end", ["abort", "shutdown"])
def test_a_request_whose_long_prime_is_being_read_can_end(make_engine, short_pieces, end):
    engine = make_engine(max_streams=8)

    async def scenario():
        running = engine.add_request("running", "", params(length=ENDLESS, seed=1))
        await running.next_delta()
        long = engine.add_request("long", LONG_PRIME * 20, params(length=40, seed=8))
        await until(lambda: engine._reading)  # 2,025 pieces to read
        engine.abort("long") if end == "abort" else engine.shutdown()
        return await asyncio.wait_for(long.result(), 10)

    outcome = asyncio.run(scenario())
    assert outcome.finish_reasons == [CANCELLED if end == "abort" else SHUTDOWN]
    assert outcome.texts == [""]
    if end == "abort":
        assert engine.load()["rows"] == 1 and not engine._reading  # only the running one


def test_long_primes_are_read_in_turn_and_once_for_all_who_sent_them(
        engine, sampler, short_pieces):
    """Two requests with one long prime share its reading; another long prime is read in
    turn with it, one piece per round; each gets what `charrnn sample` gives it."""
    pieces = []
    hook = sampler.model.register_forward_hook(
        lambda module, inputs, output: pieces.append(inputs[0].shape[1]))
    other = LONG_PRIME[::-1][:203]  # 51 pieces
    asked = [("a", LONG_PRIME, params(length=30, seed=1)),
             ("b", other, params(length=30, seed=2)),
             ("c", LONG_PRIME, params(length=30, seed=3, num_samples=2))]

    async def together():
        streams = [engine.add_request(rid, prime, p) for rid, prime, p in asked]
        return await asyncio.gather(*(s.result() for s in streams))

    try:
        outcomes = asyncio.run(together())
    finally:
        hook.remove()
    assert len(pieces) == 102 + 51  # LONG_PRIME once for both, not twice
    # In turn: the shorter prime's last piece (3 characters) comes before the longer one's
    # last (1), though the longer arrived first.
    assert pieces.index(3) < pieces.index(1)
    for (_, prime, p), outcome in zip(asked, outcomes, strict=True):
        assert outcome.texts == sampler.sample_text(p.settings, prime)


def test_random_numbers_drawn_ahead_are_the_ones_drawn_step_by_step():
    from charrnn.sample import draw_uniforms, new_generator

    cpu = torch.device("cpu")
    ahead, step_by_step = new_generator(9, cpu), new_generator(9, cpu)
    block = torch.cat([draw_uniforms(ahead, 32, 3, cpu), draw_uniforms(ahead, 5, 3, cpu)])
    assert torch.equal(block, torch.stack([torch.rand(3, generator=step_by_step)
                                           for _ in range(37)]))


def test_requests_longer_than_the_numbers_drawn_ahead_get_the_same_text(
        make_engine, sampler, monkeypatch):
    """Random numbers are drawn DRAW_AHEAD steps at a time: blocks of 7 used by windows of 5
    steps (a block's rest carried into the next, a finished sample's numbers skipped) give
    the text of one long draw."""
    from charrnn.serve import engine as engine_module

    monkeypatch.setattr(engine_module, "DRAW_AHEAD", 7)
    monkeypatch.setattr(engine_module, "FLUSH_STEPS", 5)
    engine = make_engine(max_streams=16)
    asked = [params(length=90, seed=3, num_samples=3, stop="e"), params(length=61, seed=4)]

    async def together():
        streams = [engine.add_request(f"r{i}", "", p) for i, p in enumerate(asked)]
        return await asyncio.gather(*(s.result() for s in streams))

    for p, outcome in zip(asked, asyncio.run(together()), strict=True):
        assert outcome.texts == [s.text for s in sampler.samples(p.settings, "", p.stop)]


def test_primes_read_lately_are_remembered_and_give_the_same_rows(tiny_run, monkeypatch):
    """start_many keeps what the last few short primes gave (a server's requests share a
    few) instead of reading them again; the rows are the same and their own copies."""
    from charrnn import sample as sample_module

    monkeypatch.setattr(sample_module, "REMEMBERED_PRIMES", 2)
    monkeypatch.setattr(sample_module, "REMEMBERED_PRIME_CHARS", 5)
    model, vocab, _ = load_model(tiny_run)
    sampler = Sampler(model, vocab)
    reads = []
    model.register_forward_hook(lambda module, inputs, output: reads.append(inputs[0].shape))
    settings = SampleSettings(num_samples=2)
    first = sampler.start_many([(settings, "The "), (settings, "How ")])
    assert reads == [(1, 4), (1, 4)]
    again = sampler.start_many([(settings, "The "), (settings, "long prime")])
    assert reads == [(1, 4), (1, 4), (1, 10)]  # "The " remembered; a long one read, not kept
    assert torch.equal(again[0].logits, first[0].logits)
    for mine, theirs in zip(again[0].state, first[0].state, strict=True):
        assert torch.equal(mine, theirs) and mine.data_ptr() != theirs.data_ptr()
    sampler.start_many([(settings, "a"), (settings, "b")])  # two more: "The " is forgotten
    sampler.start_many([(settings, "The ")])
    assert reads[-1] == (1, 4)
    assert list(sampler._read_primes) == [(*vocab.encode("b").tolist(),),
                                          (*vocab.encode("The ").tolist(),)]


def test_primes_are_remembered_safely_from_several_threads(tiny_run, monkeypatch):
    """A notebook or server may start samples on one Sampler from several threads: one
    thread's lookup of a remembered prime is never undone halfway by another's eviction (the
    cache below sleeps inside each lookup to let the other threads in), the remembered primes
    stay bounded, and every row is what a lone start gives."""
    import threading
    from collections import OrderedDict

    from charrnn import sample as sample_module

    class SlowToReorder(OrderedDict):
        def move_to_end(self, key, last=True):  # noqa: ANN001, ANN202 - OrderedDict's
            time.sleep(0.002)
            super().move_to_end(key, last)

    monkeypatch.setattr(sample_module, "REMEMBERED_PRIMES", 2)
    model, vocab, _ = load_model(tiny_run)
    sampler = Sampler(model, vocab)
    sampler._read_primes = SlowToReorder()
    settings = SampleSettings()
    primes = ["a", "b", "c", "The "]
    expected = {p: sampler.start(settings, p).logits for p in primes}
    failures = []

    def hammer(offset: int) -> None:
        try:
            for round_ in range(40):
                prime = primes[(offset + round_ // 4) % len(primes)]
                (streams,) = sampler.start_many([(settings, prime)])
                if not torch.equal(streams.logits, expected[prime]):
                    failures.append(prime)
        except Exception as exc:  # noqa: BLE001 - any error in a thread is the failure
            failures.append(repr(exc))

    workers = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert not failures and not any(w.is_alive() for w in workers)
    assert len(sampler._read_primes) <= 2


def test_primes_read_together_give_what_each_gives_alone(sampler):
    """A burst of new requests reads each different prime once, alone: exactly what `start`
    gives (primes of one length read in one call differed in the last bits)."""
    asked = [(SampleSettings(num_samples=n, top_k=k), prime) for n, k, prime in
             [(1, None, "The "), (3, 5, "How "), (2, None, ""), (1, 7, "The quick")]]
    together = sampler.start_many(asked)
    for (settings, prime), streams in zip(asked, together, strict=True):
        alone = sampler.start(settings, prime)
        assert streams.rows == settings.num_samples
        assert torch.equal(streams.logits, alone.logits)
        assert torch.equal(streams.rules.temperature, alone.rules.temperature)
