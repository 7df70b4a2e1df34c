import math

import pytest
import torch

from charrnn.checkpoint import load_model
from charrnn.errors import UsageError
from charrnn.model import CharRNN, ModelArgs
from charrnn.sample import Sampler, SampleSettings, parse_temperatures
from charrnn.vocab import UNK_ID, Vocab


@pytest.fixture
def sampler(tiny_run):
    model, vocab, _ = load_model(tiny_run)
    return Sampler(model, vocab)


def test_same_seed_same_text_and_different_seed_differs(sampler):
    settings = SampleSettings(length=80, temperature=1.0, seed=5)
    a = sampler.sample_text(settings, "The ")
    b = sampler.sample_text(settings, "The ")
    c = sampler.sample_text(SampleSettings(length=80, temperature=1.0, seed=6), "The ")
    assert a == b and a != c
    assert len(a[0]) == 80


def test_all_characters_come_from_the_vocabulary(sampler):
    texts = sampler.sample_text(SampleSettings(length=300, temperature=1.5, num_samples=4,
                                               seed=1))
    assert len(texts) == 4
    allowed = set(sampler.vocab.chars)
    assert all(set(t) <= allowed for t in texts)  # never <unk>


def test_temperature_zero_is_argmax():
    torch.manual_seed(0)
    vocab = Vocab.build(["abcdefgh"])
    model = CharRNN(ModelArgs(vocab_size=vocab.size, hidden_size=8, embedding_dim=4,
                              num_layers=2)).eval()
    sampler = Sampler(model, vocab)
    text = sampler.sample_text(SampleSettings(length=10, temperature=0))[0]
    # Greedy decoding by hand: feed the same start character, always take the argmax.
    ids = [vocab.stoi[c] for c in sampler.vocab.decode(sampler.start_ids([]))]
    with torch.no_grad():
        logits, _, state = model(torch.tensor([ids]))
        logits, expected = logits[:, -1], []
        for _ in range(10):
            logits[:, UNK_ID] = -float("inf")
            nxt = logits.argmax(-1)
            expected.append(vocab.itos[nxt.item()])
            logits, _, state = model(nxt[:, None], state=state)  # the whole model, one char
            logits = logits[:, -1]
    assert text == "".join(expected)


@pytest.mark.parametrize("temperature", [1e-30, 1e-38, 1e-40, 1e-300, 5e-324])
def test_a_vanishing_temperature_is_greedy_not_a_crash(sampler, temperature):
    greedy = sampler.sample_text(SampleSettings(length=50, temperature=0), "How")
    tiny = sampler.sample_text(SampleSettings(length=50, temperature=temperature, seed=1), "How")
    assert tiny == greedy


def test_top_k_one_equals_greedy(sampler):
    greedy = sampler.sample_text(SampleSettings(length=50, temperature=0), "How")
    top1 = sampler.sample_text(SampleSettings(length=50, temperature=1.0, top_k=1, seed=3),
                               "How")
    assert greedy == top1


def test_samples_in_a_batch_are_independent(sampler):
    texts = sampler.sample_text(SampleSettings(length=100, temperature=1.2, num_samples=3,
                                               seed=0))
    assert len(set(texts)) == 3


def test_a_prime_is_read_once_whatever_the_samples(sampler, monkeypatch):
    """64 samples of a prime cost one reading of it, and a burst of requests one reading per
    different prime: the rows start from copies of its state."""
    read = []
    forward = type(sampler.model).forward
    monkeypatch.setattr(type(sampler.model), "forward",
                        lambda self, x, *a, **k: read.append(tuple(x.shape)) or
                        forward(self, x, *a, **k))
    streams = sampler.start(SampleSettings(num_samples=64), "The quick ")
    assert read == [(1, 10)] and streams.rows == 64
    assert torch.equal(streams.logits, streams.logits[:1].expand(64, -1))
    read.clear()
    burst = sampler.start_many([(SampleSettings(num_samples=3), "The "),
                                (SampleSettings(num_samples=2), ""),
                                (SampleSettings(num_samples=5), "The "),
                                (SampleSettings(num_samples=1), "How ")])
    assert sorted(read) == [(1, 1), (1, 4), (1, 4)]  # "", "The " and "How ", each once
    assert [s.rows for s in burst] == [3, 2, 5, 1]
    assert torch.equal(burst[0].logits[0], burst[2].logits[4])
    # Every request's rows are its own memory (draws change them in place).
    pointers = [t.data_ptr() for b in burst for t in (b.logits, *b.state)]
    assert len(set(pointers)) == len(pointers)
    assert torch.equal(burst[3].logits, sampler.start(SampleSettings(), "How ").logits)


def test_a_long_prime_is_read_a_piece_at_a_time(sampler, monkeypatch):
    """PRIME_PIECE characters per call, the state carried: what reading it whole gives, by
    `start`, `start_many` and a PrimeReading stepped by hand (as the server does) alike."""
    from charrnn import sample as sample_module

    monkeypatch.setattr(sample_module, "PRIME_PIECE", 8)
    read = []
    forward = type(sampler.model).forward
    monkeypatch.setattr(type(sampler.model), "forward",
                        lambda self, x, *a, **k: read.append(tuple(x.shape)) or
                        forward(self, x, *a, **k))
    prime = "The quick brown fox"  # 19 characters: pieces of 8, 8 and 3
    streams = sampler.start(SampleSettings(num_samples=2), prime)
    assert read == [(1, 8), (1, 8), (1, 3)]
    with torch.inference_mode():
        whole, _, _ = forward(sampler.model, torch.tensor([sampler.encode_prime(prime)]))
    assert torch.allclose(streams.logits, whole[:, -1].expand(2, -1), atol=1e-5)
    (many,) = sampler.start_many([(SampleSettings(num_samples=2), prime)])
    assert torch.equal(many.logits, streams.logits)
    reading = sample_module.PrimeReading(sampler, sampler.encode_prime(prime))
    pieces = 0
    while not reading.done:
        reading.read_piece()
        pieces += 1
    assert pieces == 3 and torch.equal(reading.logits, streams.logits[:1])


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_rows_started_from_one_reading_match_rows_read_each(cell):
    """Each cell's state (a pair for LSTMs, one tensor otherwise) copied to every row gives
    what reading the prime for every row gave."""
    torch.manual_seed(0)
    vocab = Vocab.build(["abcdefgh"])
    model = CharRNN(ModelArgs(vocab_size=vocab.size, hidden_size=8, embedding_dim=4,
                              num_layers=2, cell=cell)).eval()
    sampler = Sampler(model, vocab)
    settings = SampleSettings(num_samples=3, length=30, seed=5)
    texts = sampler.sample_text(settings, "abc")
    with torch.no_grad():  # the prime read for every row, as before
        logits, _, state = model(torch.tensor([[vocab.stoi[c] for c in "abc"]] * 3))
    streams = sampler.start(settings, "abc")
    assert torch.allclose(streams.logits, logits[:, -1], atol=1e-6)
    assert len(texts) == 3 and all(len(t) == 30 for t in texts)


def test_prime_with_unknown_characters_lists_them(sampler):
    with pytest.raises(UsageError, match="2 characters the model cannot write .*: '红' '€'"):
        sampler.encode_prime("The 红€")


@pytest.mark.parametrize("settings", [
    SampleSettings(temperature=-0.1), SampleSettings(temperature=float("nan")),
    SampleSettings(temperature=float("inf")), SampleSettings(length=-1),
    SampleSettings(top_k=0), SampleSettings(top_k=1000), SampleSettings(num_samples=0),
    SampleSettings(top_p=0.0),
])
def test_bad_settings_are_usage_errors(sampler, settings):
    with pytest.raises(UsageError):
        settings.validate(sampler.vocab)


def test_temperature_list_parsing():
    assert parse_temperatures("0.2, 0.5,1") == [0.2, 0.5, 1.0]
    with pytest.raises(UsageError, match="not 'hot'"):
        parse_temperatures("hot")
    with pytest.raises(UsageError, match="finite number"):
        parse_temperatures("nan")


# ---- drawing: per-row rules, the inverse-CDF draw, extreme values -----------------------------
def test_each_row_draws_by_its_own_rules():
    from charrnn.sample import DrawRules, draw

    logits = torch.tensor([[0.0, 3.0, 2.0, 1.0, 0.5]]).repeat(4, 1)  # id 0 is <unk>
    rules = DrawRules(temperature=torch.tensor([0.0, 1.0, 1.0, 1.0]),
                      top_k=torch.tensor([5, 1, 5, 5]),
                      top_p=torch.tensor([2.0, 2.0, 1e-300, 2.0]))
    uniforms = torch.tensor([0.001, 0.001, 0.001, 0.001])
    nxt, logprobs = draw(logits, rules, uniforms, with_logprobs=True)
    assert nxt[:3].tolist() == [1, 1, 1]  # greedy; top-k 1; a vanishing top-p keeps the top one
    assert nxt[3].item() == 4  # a uniform near 0 reaches the end of the cumulative sum
    assert logprobs[1].item() == pytest.approx(0.0) and logprobs[2].item() == pytest.approx(0.0)
    assert logprobs[0].item() == pytest.approx(torch.log_softmax(logits[0, 1:], 0)[0].item())


def test_the_draw_follows_the_distribution():
    from charrnn.sample import DrawRules, draw

    logits = torch.tensor([[5.0, 1.0, 0.0, -1.0, 2.0]])
    rows = 40_000
    generator = torch.Generator().manual_seed(0)
    nxt, _ = draw(logits.repeat(rows, 1), DrawRules(torch.ones(rows)),
                  torch.rand(rows, generator=generator))
    counts = torch.bincount(nxt, minlength=5).float() / rows
    expected = torch.softmax(torch.tensor([-math.inf, 1.0, 0.0, -1.0, 2.0]), 0)
    assert counts[0] == 0  # <unk> never, however likely the model finds it
    torch.testing.assert_close(counts, expected, atol=0.01, rtol=0)


def test_temperature_and_top_p_beyond_float32_are_handled(sampler):
    hot = sampler.samples(SampleSettings(length=400, temperature=1e39, seed=1),
                          with_logprobs=True)[0]
    assert len(hot.text) == 400 and set(hot.text) <= set(sampler.vocab.chars)
    uniform = -math.log(sampler.vocab.size - 1)
    assert all(lp == pytest.approx(uniform, abs=1e-3) for lp in hot.logprobs)
    greedy = sampler.sample_text(SampleSettings(length=40, temperature=0), "The")
    narrow = sampler.sample_text(SampleSettings(length=40, top_p=1e-300, seed=2), "The")
    assert narrow == greedy


def test_nan_weights_are_a_clean_error():
    from charrnn.errors import CheckpointError

    vocab = Vocab.build(["abcdefgh"])
    model = CharRNN(ModelArgs(vocab_size=vocab.size, hidden_size=8, embedding_dim=4)).eval()
    with torch.no_grad():
        model.head.weight.fill_(float("nan"))
    with pytest.raises(CheckpointError, match="not numbers"):
        Sampler(model, vocab).sample_text(SampleSettings(length=10, seed=0))


def test_a_requests_text_does_not_depend_on_its_neighbours(sampler):
    """What a server does: several requests' rows stepped as one batch, each request drawing
    its own uniforms; every request gets the text it gets alone."""
    from charrnn.sample import Streams, new_generator

    requests = [(SampleSettings(length=64, temperature=0.8, seed=1), "The "),
                (SampleSettings(length=64, temperature=1.3, top_k=5, num_samples=3, seed=2),
                 "How"),
                (SampleSettings(length=64, temperature=0, seed=3), ""),
                (SampleSettings(length=64, top_p=0.9, num_samples=2, seed=4), "Sphinx")]
    alone = [sampler.sample_text(settings, prime) for settings, prime in requests]
    with torch.inference_mode():
        batch = Streams.join([sampler.start(settings, prime) for settings, prime in requests])
        generators = [new_generator(settings.seed, sampler.device) for settings, _ in requests]
        stepper, drawn = sampler.stepper(), []
        for _ in range(64):
            uniforms = torch.cat([torch.rand(settings.num_samples, generator=g)
                                  for (settings, _), g in zip(requests, generators, strict=True)])
            drawn.append(batch.advance(stepper, uniforms)[0])
    rows = torch.stack(drawn, 1).tolist()
    together, first = [], 0
    for settings, _ in requests:
        together.append([sampler.vocab.decode(r) for r in rows[first:first + settings.num_samples]])
        first += settings.num_samples
    assert together == alone


# ---- beam search ------------------------------------------------------------------------------
@pytest.fixture
def tiny_model():
    torch.manual_seed(3)
    vocab = Vocab.build(["abcd"])
    model = CharRNN(ModelArgs(vocab_size=vocab.size, hidden_size=8, embedding_dim=4)).eval()
    with torch.no_grad():
        model.head.weight.mul_(8.0)  # peaked enough for greedy and beam search to differ
    return Sampler(model, vocab)


def exhaustive_best(sampler, length, prime="a"):
    """Every continuation of `length` characters scored by the model, best first."""
    import itertools

    vocab, scored = sampler.vocab, []
    start = [vocab.stoi[c] for c in prime]
    for chars in itertools.product(vocab.chars, repeat=length):
        ids = torch.tensor([start + [vocab.stoi[c] for c in chars]])
        with torch.no_grad():
            logits, _, _ = sampler.model(ids[:, :-1])
        logp = torch.log_softmax(logits[0, len(start) - 1:].masked_fill(
            torch.arange(vocab.size) == UNK_ID, -math.inf), -1)
        total = logp.gather(1, ids[0, len(start):, None]).sum().item()
        scored.append((total, "".join(chars)))
    return sorted(scored, reverse=True)


def test_a_wide_enough_beam_finds_what_an_exhaustive_search_finds(tiny_model):
    best = exhaustive_best(tiny_model, 4)
    found = tiny_model.samples(SampleSettings(length=4, beam=64, num_samples=3), "a",
                               with_logprobs=True)
    assert [s.text for s in found] == [text for _, text in best[:3]]
    assert sum(found[0].logprobs) == pytest.approx(best[0][0], abs=1e-4)


def test_one_beam_is_greedy_and_beams_are_deterministic(tiny_model):
    greedy = tiny_model.sample_text(SampleSettings(length=12, temperature=0), "a")
    assert tiny_model.sample_text(SampleSettings(length=12, beam=1), "a") == greedy
    wide = SampleSettings(length=12, beam=5, num_samples=5)
    assert tiny_model.sample_text(wide, "a") == tiny_model.sample_text(wide, "a")
    scores = [sum(s.logprobs) for s in tiny_model.samples(wide, "a", with_logprobs=True)]
    assert scores == sorted(scores, reverse=True)


def test_beam_search_ends_at_the_stop_text(tiny_model):
    found = tiny_model.samples(SampleSettings(length=40, beam=4, num_samples=2), "a", stop="d")
    assert [s.text for s in found] == ["d", "cd"]  # finished texts, most probable first
    # A continuation that never reaches the stop text competes at its full length.
    rare = tiny_model.samples(SampleSettings(length=40, beam=4, num_samples=2), "a", stop="b")
    assert rare[0].text == "b" and len(rare[1].text) == 40 and "b" not in rare[1].text


@pytest.mark.parametrize(("settings", "fragment"), [
    (SampleSettings(beam=0), "--beam"),
    (SampleSettings(beam=2, num_samples=3), "--num-samples"),
    (SampleSettings(beam=2, temperature=0.5), "--temperature"),
    (SampleSettings(beam=2, top_k=2), "--top-k"),
])
def test_beam_options_are_checked(tiny_model, settings, fragment):
    with pytest.raises(UsageError, match=fragment):
        tiny_model.samples(settings, "a")


@pytest.mark.parametrize(("settings", "fragment"), [
    (SampleSettings(seed=2**70), "seed must be between 0 and"),
    (SampleSettings(seed=-1), "seed must be between 0 and"),
    (SampleSettings(seed="7"), "seed must be a whole number, not '7'"),
    (SampleSettings(length=5.5), "length must be a whole number, not 5.5"),
    (SampleSettings(num_samples=None), "num_samples must be a whole number, not None"),
    (SampleSettings(top_k=True), "top_k must be a whole number"),
    (SampleSettings(top_p="0.9"), "top_p must be a number, not '0.9'"),
    (SampleSettings(temperature="0.8"), "not '0.8'"),
])
def test_settings_built_in_code_are_checked_as_the_command_line_checks_them(
        tiny_model, settings, fragment):
    with pytest.raises(UsageError, match=fragment):
        tiny_model.sample_text(settings, "a")


def test_a_paused_stream_leaves_the_callers_thread_count_alone(tiny_model, monkeypatch):
    """The sampler's thread count holds while it computes a chunk, not while a caller (a
    notebook's next()) holds the stream between chunks."""
    before = torch.get_num_threads()
    monkeypatch.setattr(tiny_model, "threads_for", lambda stepper, rows: before + 1)
    one = tiny_model.stream(SampleSettings(length=200, seed=1), "a")
    two = tiny_model.stream(SampleSettings(length=200, seed=2), "a")
    next(one)
    assert torch.get_num_threads() == before
    next(two)
    one.close()
    two.close()
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("options", [{}, {"stop": "b"}, {"with_logprobs": True}])
@pytest.mark.parametrize("call", ["generate", "stream"])
def test_a_bad_request_fails_when_its_stream_is_made_not_when_it_is_read(tiny_model, call,
                                                                          options):
    """A notebook's `chunks = sampler.stream(...)` is told at once, as `charrnn sample` is,
    not at some later next()."""
    if call == "generate" and "stop" in options:
        pytest.skip("generate has no stop")
    make = getattr(tiny_model, call)
    with pytest.raises(UsageError, match="length must be"):
        make(SampleSettings(length=-1), "a", **options)
    with pytest.raises(UsageError, match="cannot write"):
        make(SampleSettings(length=5), "a€", **options)
    if call == "stream":
        with pytest.raises(UsageError, match="--beam"):
            make(SampleSettings(beam=0), "a", **options)
    chunks = make(SampleSettings(length=5, seed=1), "a", **options)
    whole = tiny_model.samples(SampleSettings(length=5, seed=1), "a", options.get("stop"))
    assert "".join(c.texts[0] for c in chunks) == whole[0].text


def test_settings_take_numpys_numbers_as_the_python_numbers_they_stand_for():
    np = pytest.importorskip("numpy")
    settings = SampleSettings(length=np.int64(5), temperature=np.float32(0.5),
                              top_p=np.float64(0.9), seed=np.uint64(2**63))
    assert (settings.length, settings.temperature, settings.top_p, settings.seed) == (
        5, 0.5, pytest.approx(0.9), 2**63)
    assert type(settings.length) is int and type(settings.temperature) is float


def test_a_model_in_training_keeps_its_mode_and_the_sampler_its_weights(tiny_run):
    """Sampler(model) put a notebook's model in eval mode (dropout off for the rest of its
    training), and text came from neither the old weights nor the new once they changed."""
    model, vocab, _ = load_model(tiny_run)
    settings = SampleSettings(length=60, seed=3)
    expected = Sampler(model, vocab).sample_text(settings)
    model.train()
    sampler = Sampler(model, vocab)
    assert model.training  # the caller's mode is the caller's
    first = sampler.sample_text(settings)
    with torch.no_grad():
        for weight in model.parameters():
            weight.mul_(0.5)  # a round of training
    assert first == sampler.sample_text(settings) == expected
    assert Sampler(model, vocab).sample_text(settings) != expected  # a new one: the new weights


@pytest.mark.parametrize("device", ["cpu", "cpu:0", torch.device("cpu", 0), None])
def test_the_cpu_is_named_as_torch_names_it(tiny_run, device):
    model, vocab, _ = load_model(tiny_run, device or "cpu")
    assert Sampler(model, vocab, device).sample_text(SampleSettings(length=5, seed=1))


@pytest.mark.parametrize(("device", "message"), [
    ("gpu", "unknown device 'gpu'; use auto, cpu, cuda or mps"),
    ("cuda:0x", "unknown device 'cuda:0x'|device 'cuda' was asked for but CUDA is not"),
    ("cpu:1", "unknown device 'cpu:1'"),
])
def test_a_device_this_machine_lacks_is_one_clear_error(tiny_run, device, message):
    model, vocab, _ = load_model(tiny_run)
    with pytest.raises(UsageError, match=message):
        Sampler(model, vocab, device)
    with pytest.raises(UsageError, match=message):
        load_model(tiny_run, device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_cuda_where_there_is_none_is_one_clear_error(tiny_run):
    """torch's own refusal was an AssertionError ("Torch not compiled with CUDA enabled")."""
    from charrnn.evaluate import score_text

    model, vocab, _ = load_model(tiny_run)
    for call in (lambda: Sampler(model, vocab, "cuda"), lambda: load_model(tiny_run, "cuda"),
                 lambda: score_text(model, vocab.encode("hello there"), "cuda")):
        with pytest.raises(UsageError, match="device 'cuda' was asked for but CUDA is not "
                           "available .*; use device=auto or cpu"):
            call()


def test_weights_elsewhere_than_the_device_named_are_refused(tiny_run):
    model, vocab, _ = load_model(tiny_run)
    with pytest.raises(UsageError, match="the model's weights are on meta but the Sampler was "
                       "asked for cpu"):
        Sampler(model.to("meta"), vocab, "cpu")


def test_a_prime_file_is_read_without_its_bom_and_an_empty_name_is_named(tmp_path):
    from charrnn.sample import read_prime_file

    path = tmp_path / "prime.txt"
    path.write_bytes(b"\xef\xbb\xbfROMEO:\r\n")
    assert read_prime_file(path) == "ROMEO:\r\n"  # the BOM was echoed before the sample
    with pytest.raises(UsageError, match="--prime-file was given an empty name"):
        read_prime_file("")
