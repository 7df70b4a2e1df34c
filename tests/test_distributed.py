"""Data-parallel training under torchrun, on the CPU with gloo (what CI can run).

Two processes with half of the streams each must train what one process with all of them
trains; rank 0 alone writes and prints; a stopped run resumes exactly under torchrun.
"""

import re
import signal
import subprocess
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from charrnn import checkpoint
from charrnn.batches import RandomBatches, StreamBatches
from charrnn.config import load_config
from charrnn.distributed import World
from charrnn.errors import ConfigError
from charrnn.evaluate import score_stream
from charrnn.metrics import read_metrics
from charrnn.model import CharRNN, ModelArgs
from charrnn.train import train
from conftest import POEM, errors_in, run_torchrun, set_args, tiny_overrides, torchrun

# fp32 and no dropout: how the batch is split is the only difference between the runs compared.
RUN = {"data.batch_size": 8, "model.dropout": 0.0, "train.threads": 1, "train.max_steps": 12,
       "train.eval_every": 6, "train.log_every": 3}
STEP_LINE = re.compile(r"^step +[\d,]+ \|", re.MULTILINE)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(POEM * 120, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def two_process_run(corpus, tmp_path_factory):
    run = tmp_path_factory.mktemp("ddp") / "run"
    return run, run_torchrun(*set_args(corpus, run, **RUN))


# ---- the pieces, in this process ----------------------------------------------------------------
@pytest.mark.parametrize("batcher", [StreamBatches, partial(StreamBatches, reset_every=64),
                                     RandomBatches], ids=["stream", "stream-resets", "random"])
def test_the_processes_shares_together_are_the_single_process_batch(batcher):
    ids = np.arange(3_000, dtype=np.uint32)
    whole = batcher(ids, 6, 16, seed=5)
    shares = [batcher(ids, 6, 16, seed=5, part=(rank, 3)) for rank in range(3)]
    for _ in range(3 * 30):  # several epochs of the streams: the epoch offsets must agree too
        x, y, reset = whole.next()
        parts = [share.next() for share in shares]
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)
        assert torch.equal(torch.cat([p[2] for p in parts]), reset)
    assert all(share.progress == whole.progress for share in shares)


def test_no_character_is_trained_twice_in_an_epoch():
    ids = np.arange(2_000, dtype=np.uint32)
    shares = [StreamBatches(ids, 4, 10, seed=1, part=(rank, 2)) for rank in range(2)]
    seen = np.concatenate([share.next()[0].numpy().ravel()
                           for _ in range(shares[0].windows) for share in shares])
    assert len(np.unique(seen)) == len(seen) == shares[0].chars_per_epoch


def test_a_batch_that_does_not_split_evenly_is_refused():
    ids = np.arange(2_000, dtype=np.uint32)
    with pytest.raises(ConfigError, match=r"'data.batch_size' is 6.*over 4 processes"):
        StreamBatches(ids, 6, 10, seed=0, part=(0, 4))
    with pytest.raises(ConfigError, match="multiple of 4"):
        RandomBatches(ids, 6, 10, seed=0, part=(0, 4))


def test_a_short_corpus_gives_every_process_as_many_streams():
    ids = np.arange(100, dtype=np.uint8)  # room for 4 streams of 20: 3 processes take 1 each
    shares = [StreamBatches(ids, 6, 20, seed=0, part=(rank, 3)) for rank in range(3)]
    assert [share.batch_size for share in shares] == [3, 3, 3]
    assert [share.next()[0].shape for share in shares] == [(1, 20)] * 3


def test_the_shares_of_an_evaluation_add_up_to_the_whole_score():
    torch.manual_seed(0)
    model = CharRNN(ModelArgs(vocab_size=7, hidden_size=16, embedding_dim=8, num_layers=2))
    ids = np.random.default_rng(0).integers(0, 7, 5_001).astype(np.uint8)
    cpu = torch.device("cpu")
    whole = score_stream(model, ids, cpu, streams=7, burn_in=64)
    shares = [score_stream(model, ids, cpu, streams=7, burn_in=64, part=(rank, 3))
              for rank in range(3)]
    assert sum(share.chars for share in shares) == whole.chars == 5_000
    assert sum(share.nats for share in shares) == pytest.approx(whole.nats, rel=1e-6)


def test_a_process_without_torchrun_is_a_world_of_one_that_changes_nothing():
    world = World()
    assert (world.rank, world.size, world.is_main, world.part) == (0, 1, True, (0, 1))
    model, tensor = torch.nn.Linear(2, 2), torch.ones(3)
    assert world.wrap(model) is model and world.mean(tensor) is tensor
    assert world.max([2.5, 1]) == [2.5, 1]
    assert world.sum([1.0, 2]) == [1.0, 2] and world.gather("x") == ["x"]
    assert world.run_on_main(lambda: 7) == 7 and world.in_turns(lambda: 8) == 8


# ---- two processes under torchrun -------------------------------------------------------------
def test_two_processes_train_one_run_written_and_reported_once(two_process_run):
    run, child = two_process_run
    assert child.returncode == 0, child.stderr
    assert "Traceback" not in child.stderr and not errors_in(child.stderr)
    out = child.stdout
    assert out.count("data parallel: 2 processes (gloo), each training 4 of the 8 streams") == 1
    assert out.count("device: cpu") == 1 and out.count("done: 12 steps") == 1
    assert len(STEP_LINE.findall(out)) == 4  # steps 3, 6, 9, 12, printed by rank 0 alone
    records = read_metrics(run)
    assert [r["step"] for r in records if r["kind"] == "train"] == [3, 6, 9, 12]
    assert [(r["step"], r["final"]) for r in records if r["kind"] == "eval"] == [
        (6, False), (12, True)]
    assert sorted(p.name for p in run.iterdir() if p.suffix == ".pt") == ["best.pt", "last.pt"]
    assert not list(run.glob(".*.tmp"))
    assert checkpoint.load(run / "last.pt")["step"] == 12


def test_two_processes_with_half_the_batch_each_make_the_same_updates_as_one(
        two_process_run, corpus, tmp_path):
    run, child = two_process_run
    assert child.returncode == 0, child.stderr
    alone = tmp_path / "alone"
    train(load_config(None, tiny_overrides(corpus, alone, **RUN)))
    two, one = checkpoint.load(run / "last.pt"), checkpoint.load(alone / "last.pt")
    for key, weights in one["model"].items():
        torch.testing.assert_close(two["model"][key], weights, rtol=1e-4, atol=1e-6, msg=key)
    moments_two = two["train_state"]["optimizer"]["state"]
    for param, moments in one["train_state"]["optimizer"]["state"].items():
        for key, value in moments.items():
            torch.testing.assert_close(moments_two[param][key], value, rtol=1e-4, atol=1e-7)
    # The streams' hidden states, gathered from both processes, are the single process's.
    for part_two, part_one in zip(two["train_state"]["hidden"], one["train_state"]["hidden"],
                                  strict=True):
        torch.testing.assert_close(part_two, part_one, rtol=1e-4, atol=1e-6)
    losses = [[r["loss"] for r in read_metrics(path) if r["kind"] == "train"]
              for path in (run, alone)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)  # the mean over both processes


def test_an_error_is_shown_once_and_ends_every_process(corpus, tmp_path):
    child = run_torchrun(*set_args(corpus, tmp_path / "run", **{**RUN, "data.batch_size": 7}))
    assert child.returncode != 0
    assert errors_in(child.stderr) == [
        "error: config: 1 problem: 'data.batch_size' is 7, the total over all processes, which "
        "does not split evenly over 2 processes; use a multiple of 2"], child.stderr
    assert "exitcode  : 2" in child.stderr  # torchrun's own report: rank 0's exit code
    assert not list((tmp_path / "run").glob("*.pt"))


# Run by torchrun in place of `-m charrnn`: the process of rank 1 alone cannot read the corpus.
RANK_1_FAILS = """
import os, sys
from charrnn import train
from charrnn.cli import main
from charrnn.errors import CorpusError
load_dataset = train.load_dataset
def load_or_fail(*args, **kwargs):
    if os.environ["RANK"] == "1":
        raise CorpusError("cannot read the corpus here")
    return load_dataset(*args, **kwargs)
train.load_dataset = load_or_fail
sys.argv = ["charrnn", *sys.argv[1:]]
main()
"""


def test_an_error_on_one_process_alone_is_shown_once_by_rank_0(corpus, tmp_path):
    script = tmp_path / "rank_1_fails.py"
    script.write_text(RANK_1_FAILS, encoding="utf-8")
    child = run_torchrun(*set_args(corpus, tmp_path / "run", **RUN), script=str(script))
    assert child.returncode != 0
    assert errors_in(child.stderr) == ["error: cannot read the corpus here (on rank 1)"], \
        child.stderr
    assert "[rank" not in child.stderr  # no process's traceback (torch marks them [rankN])


# Run by torchrun in place of `-m charrnn`: rank 1 is started with its own extra arguments, or
# in its own directory (--cd DIR), as on another machine.
RANK_1_DIFFERS = """
import os, sys
from charrnn.cli import main
command, extra = sys.argv[1], sys.argv[2:sys.argv.index("--")]
rest = sys.argv[sys.argv.index("--") + 1:]
if os.environ["RANK"] == "1":
    if extra[:1] == ["--cd"]:
        os.chdir(extra.pop(1))
        extra.pop(0)
    rest += extra
sys.argv = ["charrnn", command, *rest]
main()
"""


@pytest.mark.parametrize(("extra", "says"), [
    (["--set", "model.hidden_size=64"], "error: config: 1 problem: rank 1 was started with "
     "other settings than rank 0: model.hidden_size (64 against 32); start every process with "
     "the same config and --set options"),
    (["--cd", "{elsewhere}"],
     "error: the corpus or vocabulary of rank 1 differs from rank 0's (another copy of "
     "data.path, or another data.vocab): give every machine the same files"),
], ids=["settings", "corpus"])
def test_machines_that_differ_are_refused_before_they_train(tmp_path, extra, says):
    """A --set on one machine only was silently ignored (rank 0's settings won, and which
    machine is rank 0 is torchrun's choice); another copy of the corpus gave the same ids
    other characters on each machine, without a word."""
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"  # each "machine" its own
    for folder, text in ((here, POEM), (elsewhere, POEM.replace("e", "~"))):
        folder.mkdir()
        (folder / "corpus.txt").write_text(text * 120, encoding="utf-8")
    extra = [a.format(elsewhere=elsewhere) for a in extra]
    script = tmp_path / "rank_1_differs.py"
    script.write_text(RANK_1_DIFFERS, encoding="utf-8")
    command = torchrun(*extra, "--", *set_args(Path("corpus.txt"), Path("run"), **RUN),
                       script=str(script))
    child = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=here)
    assert child.returncode != 0
    assert says in errors_in(child.stderr), child.stderr
    assert not list((here / "run").glob("*.pt"))


@pytest.mark.slow
def test_a_stopped_run_resumes_exactly_under_torchrun(corpus, tmp_path):
    # Dropout on: each process must get its own random number generator back.
    settings = {**RUN, "model.dropout": 0.2, "train.max_steps": 300, "train.eval_every": 100,
                "train.log_every": 1}
    reference = tmp_path / "reference"
    assert run_torchrun(*set_args(corpus, reference, **settings)).returncode == 0

    run = tmp_path / "run"
    child = subprocess.Popen(torchrun(*set_args(corpus, run, **settings)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in child.stdout:
        if STEP_LINE.match(line):
            break
    child.send_signal(signal.SIGINT)  # to torchrun, which passes it on to both processes
    _, stderr = child.communicate(timeout=120)
    shown = errors_in(stderr)
    assert len(shown) == 1 and shown[0].startswith("error: stopped by SIGINT at step"), stderr
    assert "torchrun ... -m charrnn train --resume" in stderr
    stopped = checkpoint.load(run / "last.pt")["step"]
    assert 1 <= stopped < settings["train.max_steps"]

    resumed = run_torchrun("--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at step {stopped:,}" in resumed.stdout
    for name in ("last.pt", "best.pt"):
        a, b = checkpoint.load(reference / name), checkpoint.load(run / name)
        assert a["step"] == b["step"]
        for key in a["model"]:
            assert torch.equal(a["model"][key], b["model"][key]), (name, key)
    evaluations = [[(r["step"], r["val_loss"]) for r in read_metrics(path) if r["kind"] == "eval"]
                   for path in (reference, run)]
    assert evaluations[0] == evaluations[1]


@pytest.mark.cuda
def test_two_gpus_make_the_same_updates_as_one(corpus, tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices (one process per GPU, NCCL)")
    settings = {**RUN, "train.device": "cuda", "train.precision": "fp32"}
    run = tmp_path / "run"
    child = run_torchrun(*set_args(corpus, run, **settings))
    assert child.returncode == 0, child.stderr
    assert "2 processes (nccl)" in child.stdout
    alone = tmp_path / "alone"
    train(load_config(None, tiny_overrides(corpus, alone, **settings)))
    two, one = checkpoint.load(run / "last.pt"), checkpoint.load(alone / "last.pt")
    for key, weights in one["model"].items():
        # cuDNN picks kernels by batch size: looser than on the CPU.
        torch.testing.assert_close(two["model"][key], weights, rtol=1e-3, atol=1e-5, msg=key)
