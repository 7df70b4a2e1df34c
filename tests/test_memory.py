"""Sizes checked against what the machine can hold before anything is allocated (memory.py),
and an out-of-memory error that gets through anyway is one line of advice fitting the command.

Nothing here allocates gigabytes: the checks refuse before allocating, and where a real
allocation failure is wanted, the command runs in a subprocess under an address-space limit
(RLIMIT_AS), so that a broken check fails the test instead of the machine.
"""

import subprocess
import sys
import textwrap

import pytest
import torch
from typer.testing import CliRunner

from charrnn import memory
from charrnn.cli import app
from charrnn.model import CharRNN, ModelArgs
from conftest import assert_clean_error, set_args

runner = CliRunner()
GB = 10**9


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("layers", [1, 3])
def test_the_weight_shapes_are_the_models_own(cell, layers):
    args = ModelArgs(vocab_size=11, embedding_dim=5, hidden_size=7, num_layers=layers, cell=cell)
    built = {name: tuple(w.shape) for name, w in CharRNN(args).state_dict().items()}
    assert memory.weight_shapes(args) == built
    assert memory.parameter_count(args) == CharRNN(args).num_parameters()


def test_available_memory_is_known_here_and_respects_an_address_space_limit():
    assert memory.available_bytes() > 0
    script = textwrap.dedent("""
        import resource
        from charrnn import memory
        free = memory.available_bytes()
        resource.setrlimit(resource.RLIMIT_AS, (memory._address_space_used() + 10**9,) * 2)
        limited = memory.available_bytes()
        assert 0.9e9 < limited <= 1e9 and limited <= free, (free, limited)
        print("ok")
    """)
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           timeout=120)
    assert child.stdout.strip() == "ok", child.stderr


def big_text(tmp_path, corpus):
    path = tmp_path / "big.txt"
    path.write_text(corpus.read_text(encoding="utf-8") * 10, encoding="utf-8")
    return path


@pytest.fixture
def machine_with(monkeypatch):
    """machine_with(bytes): make the checks see that much memory available."""
    def set_available(nbytes: int) -> None:
        monkeypatch.setattr(memory, "available_bytes", lambda: nbytes)

    return set_available


# These run in-process, each refused by a check before any allocation (the sizes asked for
# are also far beyond what the machine has, so a broken check would fail to allocate at once).
@pytest.mark.parametrize(("available", "make_args", "fragments"), [
    (GB, lambda t, run, c: ["train", *set_args(c, t / "run", **{"model.hidden_size": 60_000})],
     ["training (", "needs about", "lower data.batch_size", "model.hidden_size"]),
    # Also when the precision is to be measured: measuring builds and trains the model.
    (GB, lambda t, run, c: ["train", *set_args(c, t / "run", **{"model.hidden_size": 60_000,
                                                            "train.precision": "auto"})],
     ["training (", "needs about", "model.hidden_size"]),
    (GB, lambda t, run, c: ["train", *set_args(c, t / "run", **{"data.batch_size": 10**8,
                                                            "data.batching": "random"})],
     ["100,000,000 streams", "lower data.batch_size"]),
    (GB, lambda t, run, c: ["train", *set_args(c, t / "run", **{"data.seq_len": 10**6})],
     ["fewer than one window"]),
    (GB, lambda t, run, c: ["sample", "-k", run, "-N", "100000", "-n", "100000000"],
     ["100,000 samples of 100,000,000 characters", "lower --num-samples or --length"]),
    (GB, lambda t, run, c: ["sample", "-k", run, "-N", "100000", "-n", "1000", "--format", "json"],
     ["lower --num-samples or --length"]),
    # A prime is read a piece at a time (sample.PRIME_PIECE characters), so however long, it
    # needs only a piece's memory: refused where even that does not fit.
    (10**5, lambda t, run, c: ["sample", "-k", run, "-p", "The quick brown fox " * 40_000],
     ["use a shorter --prime"]),
    (10**6, lambda t, run, c: ["eval", "-k", run, "--streams", "2"],
     ["scoring 2 parallel segments", "lower --streams"]),
    (10**5, lambda t, run, c: ["eval", "-k", run, big_text(t, c)],
     ["the text to score (207,600 bytes)", "score less text"]),
    (GB // 4, lambda t, run, c: ["plot", run, "--width", "10000", "--height", "10000",
                                 "-o", t / "p.png"],
     ["10,000 x 10,000 pixel figure", "lower --width and --height"]),
])
def test_sizes_the_machine_cannot_hold_are_refused_naming_what_to_lower(
        available, make_args, fragments, tmp_path, tiny_run, corpus, machine_with):
    machine_with(available)
    result = invoke(*make_args(tmp_path, tiny_run, corpus))
    assert_clean_error(result, 1, *fragments, one_line=True)


def test_the_library_sampler_refuses_what_the_machine_cannot_hold(tiny_run, machine_with):
    """A notebook calling Sampler directly gets the same clear refusal as the command line."""
    from charrnn.checkpoint import load_model
    from charrnn.errors import ResourceError
    from charrnn.sample import Sampler, SampleSettings

    model, vocab, _ = load_model(tiny_run)
    sampler = Sampler(model, vocab)
    machine_with(GB)
    # Refused before anything is made per sample (a list per sample ran out of memory first).
    with pytest.raises(ResourceError, match=r"10,000,000,000 samples read together needs "
                                            r"about .* ask for fewer samples"):
        sampler.sample_text(SampleSettings(length=5, num_samples=10_000_000_000))
    with pytest.raises(ResourceError):  # a stop watch per sample was made before the check
        sampler.stream(SampleSettings(length=5, num_samples=10_000_000_000), stop="e")
    assert len(sampler.sample_text(SampleSettings(length=5, num_samples=3))) == 3


def test_a_model_that_fits_is_not_refused(tmp_path, tiny_run, corpus, machine_with):
    machine_with(GB)
    assert invoke("sample", "-k", tiny_run, "-N", "4", "-n", "50").exit_code == 0
    assert invoke("eval", "-k", tiny_run).exit_code == 0


def test_default_evaluation_reads_fewer_segments_at_once_to_fit(tiny_run, corpus, monkeypatch,
                                                                 machine_with):
    from charrnn.checkpoint import load_model
    from charrnn.evaluate import CHUNK, score_stream
    from charrnn.vocab import Vocab

    model, vocab, _ = load_model(tiny_run)
    ids = vocab.encode(corpus.read_text(encoding="utf-8") * 20)
    one_row = memory.scoring_bytes(model.args, 1, CHUNK)
    machine_with(8 * one_row)  # room for 4 rows at once, with the process's share
    seen = []
    forward = CharRNN.forward

    def counting(self, idx, *args, **kwargs):
        seen.append(idx.shape[0])
        return forward(self, idx, *args, **kwargs)

    monkeypatch.setattr(CharRNN, "forward", counting)
    score = score_stream(model, ids, torch.device("cpu"))
    assert score.chars == len(ids) - 1 and max(seen) == 4
    assert isinstance(vocab, Vocab)


MEMORY_ERRORS = {
    "sample": (["sample", "-N", "3"], "charrnn.sample.Sampler.generate",
               "out of memory; lower --num-samples or --length"),
    "eval": (["eval"], "charrnn.evaluate.score_text", "out of memory; lower --streams"),
    "info": (["info"], "charrnn.cli.tables.checkpoint_table", "out of memory; close other "
             "programs"),
}


@pytest.mark.parametrize("command", list(MEMORY_ERRORS))
@pytest.mark.parametrize("error", [MemoryError(), RuntimeError(
    "[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: you "
    "tried to allocate 4000000000 bytes. Error code 12 (Cannot allocate memory)")],
    ids=["MemoryError", "CPU allocator"])
def test_an_out_of_memory_error_gives_advice_that_fits_the_command(command, error, tiny_run,
                                                                     monkeypatch):
    args, where, advice = MEMORY_ERRORS[command]

    def fail(*a, **k):
        raise error

    monkeypatch.setattr(where, fail)
    checkpoint = [tiny_run] if command == "info" else ["-k", tiny_run]
    result = invoke(args[0], *checkpoint, *args[1:])
    assert_clean_error(result, 1, advice, one_line=True)
    assert "data.batch_size" not in result.stderr  # training advice is for training


def test_a_real_allocation_failure_is_one_line(tmp_path, tiny_run):
    """With the checks blinded, the allocation itself fails (under RLIMIT_AS, in a child)."""
    script = textwrap.dedent(f"""
        import resource, sys
        from typer.testing import CliRunner
        from charrnn import memory, sample
        from charrnn.cli import app
        memory.available_bytes = lambda: None  # the checks see no limit: the allocator does
        resource.setrlimit(resource.RLIMIT_AS, (memory._address_space_used() + 2 * 10**9,) * 2)
        sample.PRIME_PIECE = 10**9  # the long prime below read in one call: too large
        result = CliRunner().invoke(app, ["sample", "-k", {str(tiny_run)!r}, "-N", "2",
                                          "-p", "The quick brown fox " * 500_000, "-n", "5"])
        print(result.exit_code)
        print(result.stderr)
    """)
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           timeout=300)
    code, _, stderr = child.stdout.partition("\n")
    assert code == "1", child.stdout + child.stderr
    assert stderr.startswith("error: ") and "out of memory; lower --num-samples" in stderr
    assert "Traceback" not in child.stdout + child.stderr
