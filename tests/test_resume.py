"""Never lose a run: stopped, killed or resumed, training ends with the very same weights.

Every comparison is bit for bit (torch.equal) against the same run left uninterrupted, on CPU
in fp32 with dropout on, so the random number generators must be restored too.
"""

import json
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from charrnn import checkpoint
from charrnn.cli import app
from charrnn.config import load_config
from charrnn.errors import TrainingInterrupted
from charrnn.metrics import read_metrics
from charrnn.rundir import saved_config
from charrnn.train import Trainer, train
from conftest import POEM, StopAfter, assert_clean_error, set_args, tiny_overrides

runner = CliRunner()
# Dropout on: a resumed run must draw the same dropout masks as the uninterrupted one.
RUN = {"model.dropout": 0.2, "train.threads": 1, "train.max_steps": 60, "train.eval_every": 20,
       "train.log_every": 1}
STEP_LINE = re.compile(r"^step +[\d,]+ \|")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(POEM * 120, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """The uninterrupted run for some settings (trained once per module)."""
    runs = {}

    def run_for(**extra):
        key = json.dumps(extra, sort_keys=True)
        if key not in runs:
            runs[key] = tmp_path_factory.mktemp("reference") / "run"
            train(load_config(None, tiny_overrides(corpus, runs[key], **{**RUN, **extra})))
        return runs[key]

    return run_for


def train_here(monkeypatch, corpus, run, *, stop_after=None, resume=False, **extra):
    """Train in this process; with stop_after, as if Ctrl-C came during that step."""
    config = load_config(None, tiny_overrides(corpus, run, **{**RUN, **extra}))
    try:
        return train(config, resume=resume, stop=StopAfter(stop_after or 10**9))
    except TrainingInterrupted as stopped:
        assert stop_after is not None and stopped.exit_code == 130
        return None


def assert_same_checkpoint(expected, actual):
    a, b = checkpoint.load(expected), checkpoint.load(actual)
    assert a["step"] == b["step"]
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    if "train_state" in a:  # the optimizer's moments must match too, not only the weights
        sa, sb = a["train_state"]["optimizer"]["state"], b["train_state"]["optimizer"]["state"]
        assert sa.keys() == sb.keys()
        for param in sa:
            for key in sa[param]:
                assert torch.equal(sa[param][key], sb[param][key]), (param, key)


def evaluations(run):
    return [(r["step"], r["val_loss"], r["final"]) for r in read_metrics(run)
            if r["kind"] == "eval"]


def train_losses(run):
    return [(r["step"], r["loss"]) for r in read_metrics(run) if r["kind"] == "train"]


def assert_same_run(expected, actual):
    assert_same_checkpoint(expected / "last.pt", actual / "last.pt")
    assert_same_checkpoint(expected / "best.pt", actual / "best.pt")
    assert evaluations(actual) == evaluations(expected)
    assert train_losses(actual) == train_losses(expected)  # stopped mid-interval too


# ---- stop and resume, in this process -----------------------------------------------------------
@pytest.mark.parametrize(("settings", "stops"), [
    ({}, [1]),
    ({}, [20]),  # at an evaluation
    ({}, [7, 13, 21]),  # stopped three times
    ({"train.log_every": 5}, [7, 13]),  # within log intervals: their means span the stops
    ({"model.cell": "gru", "data.batching": "random"}, [9]),
    ({"model.cell": "rnn", "optim.grad_clip": 0, "optim.weight_decay": 0.1,
      "optim.schedule": "linear"}, [33]),
], ids=["lstm-step-1", "lstm-at-eval", "lstm-three-stops", "lstm-mid-interval",
         "gru-random-windows", "rnn-no-clip"])
def test_stopped_and_resumed_run_ends_with_the_same_weights(monkeypatch, tmp_path, corpus,
                                                            reference, settings, stops):
    run = tmp_path / "run"
    for index, steps in enumerate(stops):
        assert train_here(monkeypatch, corpus, run, stop_after=steps, resume=index > 0,
                          **settings) is None
    result = train_here(monkeypatch, corpus, run, resume=True, **settings)
    assert result.step == RUN["train.max_steps"]
    assert_same_run(reference(**settings), run)


def test_resuming_a_finished_run_changes_nothing(monkeypatch, tmp_path, corpus, reference):
    run = tmp_path / "run"
    train_here(monkeypatch, corpus, run)
    train_here(monkeypatch, corpus, run, resume=True)
    assert_same_run(reference(), run)  # also: the final evaluation is not logged twice


def test_a_finished_run_trained_longer_keeps_the_evaluation_it_ended_with(monkeypatch,
                                                                           tmp_path, corpus):
    """`--resume --set train.max_steps=...` dropped the first end's final evaluation (step 30
    here, between the regular ones at 20 and 40), leaving a gap in the history."""
    run = tmp_path / "run"
    train_here(monkeypatch, corpus, run, **{"train.max_steps": 30})
    first = evaluations(run)
    assert first[-1][0] == 30 and first[-1][2]
    train_here(monkeypatch, corpus, run, resume=True, **{"train.max_steps": 50})
    assert evaluations(run) == [*first, (40, evaluations(run)[-2][1], False),
                                (50, evaluations(run)[-1][1], True)]


# ---- signals, in a real process ---------------------------------------------------------------
def start_training(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "charrnn", "train", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_steps(child: subprocess.Popen, count: int) -> None:
    """Read the child's output until it has logged `count` training steps."""
    seen = 0
    for line in child.stdout:
        seen += bool(STEP_LINE.match(line))
        if seen >= count:
            return
    pytest.fail(f"training ended before {count} steps: {child.stderr.read()}")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
                         ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_signal_stops_training_at_a_step_and_resume_is_exact(tmp_path, corpus, reference,
                                                               signum):
    """SIGHUP too (a closed terminal, a dropped SSH session): it ended training at once."""
    run = tmp_path / "run"
    child = start_training(*set_args(corpus, run, **RUN))
    wait_for_steps(child, 1)
    child.send_signal(signum)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 128 + signum, stderr  # 130 for SIGINT, 143 for SIGTERM
    assert "Traceback" not in stderr
    assert stderr.startswith("error: stopped by " + signal.Signals(signum).name)
    assert f"Continue with: charrnn train --resume {run}" in stderr
    stopped = checkpoint.load(run / "last.pt")
    assert 1 <= stopped["step"] < RUN["train.max_steps"] and "train_state" in stopped

    # Both ways of resuming: the run directory alone, or the config with a bare --resume.
    args = ["--resume", run] if signum == signal.SIGTERM else [*set_args(corpus, run, **RUN),
                                                               "--resume"]
    resumed = runner.invoke(app, ["train", *map(str, args)])
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming at step {stopped['step']:,}" in resumed.stdout
    assert_same_run(reference(), run)


def test_under_nohup_a_hangup_leaves_training_running(tmp_path, corpus):
    run = tmp_path / "run"
    child = subprocess.Popen(
        [sys.executable, "-m", "charrnn", "train", *map(str, set_args(corpus, run, **RUN))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))  # what nohup does
    wait_for_steps(child, 1)
    child.send_signal(signal.SIGHUP)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 0, stderr
    assert checkpoint.load(run / "last.pt")["step"] == RUN["train.max_steps"]


# Run as `python -c`: train with every file write slowed down, so that saving a checkpoint
# takes long enough for a second Ctrl-C to arrive in the middle of it.
SLOW_WRITES = """
import os, sys, time
from charrnn.cli import main
real_fdopen = os.fdopen
class SlowFile:
    def __init__(self, f):
        self.f = f
    def write(self, data):
        time.sleep(0.02)
        return self.f.write(data)
    def __getattr__(self, name):
        return getattr(self.f, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return self.f.__exit__(*exc)
os.fdopen = lambda *args, **kwargs: SlowFile(real_fdopen(*args, **kwargs))
sys.argv = ["charrnn", "train", *sys.argv[1:]]
main()
"""


def test_a_second_ctrl_c_exits_at_once_and_damages_nothing(tmp_path, corpus, reference):
    run = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-c", SLOW_WRITES, *set_args(corpus, run, **RUN)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_steps(child, 1)
    child.send_signal(signal.SIGINT)  # finish the step, then save (slowly)
    time.sleep(0.2)
    child.send_signal(signal.SIGINT)  # stop now
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 130, stderr
    assert stderr.startswith("interrupted") and "Traceback" not in stderr
    assert not list(run.glob(".*.tmp"))  # the interrupted write was cleaned up
    assert_intact(run)
    resumed = runner.invoke(app, ["train", "--resume", str(run)])
    assert resumed.exit_code == 0, resumed.output
    assert_same_run(reference(), run)


# ---- SIGKILL at any moment ----------------------------------------------------------------------
KILL_RUN = {"train.eval_every": 4, "train.eval_chars": 300, "train.keep_last": 2}
# Run as `python -c`: train, but die (SIGKILL) half-way through writing last.pt at one step.
DIE_WRITING = """
import io, os, signal, sys, torch
from charrnn.cli import main
real_save, die_at = torch.save, int(sys.argv[1])
def half_then_die(obj, f, *args, **kwargs):
    if obj.get("step") == die_at and "train_state" in obj:
        data = io.BytesIO()
        real_save(obj, data)
        f.write(data.getvalue()[: len(data.getvalue()) // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    real_save(obj, f, *args, **kwargs)
torch.save = half_then_die
sys.argv = ["charrnn", "train", *sys.argv[2:]]
main()
"""


def assert_intact(run):
    """Every checkpoint on disk loads and fits its model; the metrics file reads."""
    for path in [run / "last.pt", run / "best.pt", *run.glob("step-*.pt")]:
        if path.exists():
            model, vocab, payload = checkpoint.load_model(path)
            assert model.args.vocab_size == vocab.size
            assert ("train_state" in payload) == (path.name == "last.pt")
    if (run / "metrics.jsonl").exists():
        read_metrics(run)


@pytest.mark.slow
def test_killed_at_random_moments_and_resumed_ends_with_the_same_weights(tmp_path, corpus,
                                                                         reference):
    run = tmp_path / "run"
    args = set_args(corpus, run, **{**RUN, **KILL_RUN})
    # A kill half-way through writing last.pt at step 8 leaves step 4's last.pt in place.
    child = subprocess.run([sys.executable, "-c", DIE_WRITING, "8", *args],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert checkpoint.load(run / "last.pt")["step"] == 4
    assert list(run.glob(".last.pt.*.tmp")), "the kill should have left a partial file"
    assert_intact(run)

    rng = random.Random(20240607)
    for round_ in range(3):
        child = start_training("--resume", str(run))
        wait_for_steps(child, rng.randint(1, 12))
        if round_ == 0:  # meanwhile, a second run into the same directory is refused
            refused = runner.invoke(app, ["train", "--resume", str(run)])
            assert_clean_error(refused, 1, f"in use by process {child.pid}")
        time.sleep(rng.uniform(0, 0.05))
        child.kill()
        child.communicate(timeout=60)
        assert_intact(run)

    # The dead process's lock is taken over; the partial files are cleaned away.
    resumed = runner.invoke(app, ["train", "--resume", str(run)])
    assert resumed.exit_code == 0, resumed.output
    expected = reference(**KILL_RUN)
    assert_same_run(expected, run)
    steps = sorted(p.name for p in run.glob("step-*.pt"))
    assert steps == sorted(p.name for p in expected.glob("step-*.pt"))
    for name in steps:
        assert_same_checkpoint(expected / name, run / name)
    assert not list(run.glob(".*.tmp"))
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert all(json.loads(line) for line in lines)  # no partial line survives a resume


# ---- the run directory's lock -------------------------------------------------------------------
HOLD_LOCK = """
import sys, time
from charrnn.rundir import RunLock
RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_live_runs_directory_is_refused_and_a_dead_ones_lock_taken_over(tmp_path, corpus):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        args = ["train", *set_args(corpus, run, **{"train.max_steps": 3, "train.eval_every": 0})]
        assert_clean_error(runner.invoke(app, args), 1, f"in use by process {holder.pid}",
                           "choose another train.out_dir")
        assert not (run / "last.pt").exists()
    finally:
        holder.kill()
        holder.communicate()
    result = runner.invoke(app, args)  # the lock file is still there; its holder is not
    assert result.exit_code == 0, result.output


# ---- diverging training -------------------------------------------------------------------------
def poison_weights_after_step(monkeypatch, step):
    """Make the update of `step` leave an infinite weight, as a far too high lr would."""
    real = Trainer.train_step

    def train_step(self):
        result = real(self)
        if self.step + 1 == step:  # self.step counts completed steps
            with torch.no_grad():
                self.model.head.bias[1] = float("inf")
        return result

    monkeypatch.setattr(Trainer, "train_step", train_step)


@pytest.mark.parametrize(("poisoned", "named", "what"), [
    (12, 13, "the loss"),  # the next step's loss is NaN
    (20, 20, "the weights"),  # an evaluation step: its own loss was still finite
])
def test_a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
        monkeypatch, tmp_path, corpus, poisoned, named, what):
    run = tmp_path / "run"
    poison_weights_after_step(monkeypatch, poisoned)
    args = ["train", *set_args(corpus, run, **{**RUN, "train.eval_every": 10,
                                               "train.log_every": 5})]
    result = runner.invoke(app, args)
    assert_clean_error(result, 1, f"{what} became non-finite", f"at step {named}",
                       "Lower optim.lr")
    for name in ("last.pt", "best.pt"):
        payload = checkpoint.load(run / name)
        assert payload["step"] == 10
        assert all(torch.isfinite(t).all() for t in payload["model"].values())


def test_divergence_before_any_checkpoint_does_not_promise_one(monkeypatch, tmp_path, corpus):
    run = tmp_path / "run"
    poison_weights_after_step(monkeypatch, 3)
    args = ["train", *set_args(corpus, run, **{**RUN, "train.eval_every": 10})]
    assert_clean_error(runner.invoke(app, args), 1, "became non-finite",
                       "no checkpoint was written", "Lower optim.lr")
    assert not list(run.glob("*.pt"))


# ---- keep_last, best.pt, starting and resuming edge cases ---------------------------------------
def test_keep_last_keeps_the_most_recent_step_checkpoints(monkeypatch, tmp_path, corpus):
    run = tmp_path / "run"
    train_here(monkeypatch, corpus, run, **{"train.keep_last": 2, "train.eval_every": 10})
    assert sorted(p.name for p in run.glob("step-*.pt")) == ["step-00000050.pt",
                                                             "step-00000060.pt"]
    assert_intact(run)
    # Starting over removes the old run's step checkpoints: none may pass for the new run's.
    args = ["train", "--overwrite", *set_args(corpus, run, **{
        **RUN, "train.keep_last": 2, "train.eval_every": 5, "train.max_steps": 15})]
    assert runner.invoke(app, args).exit_code == 0
    assert sorted(p.name for p in run.glob("step-*.pt")) == ["step-00000010.pt",
                                                             "step-00000015.pt"]


@pytest.mark.parametrize("bad", ["data.path=MISSING", "train.device=no-such-device",
                                 "data.seq_len=100000"])
def test_overwrite_that_fails_its_checks_leaves_the_old_run_alone(tmp_path, corpus, bad):
    run = tmp_path / "run"
    train_args = ["train", *set_args(corpus, run, **{"train.max_steps": 5,
                                                     "train.eval_every": 0})]
    assert runner.invoke(app, train_args).exit_code == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.suffix in (".pt", ".jsonl")}
    bad = bad.replace("MISSING", str(tmp_path / "missing.txt"))
    result = runner.invoke(app, [*train_args, "--overwrite", "--set", bad])
    assert result.exit_code in (1, 2)
    assert "Traceback" not in result.output
    assert {name: (run / name).read_bytes() for name in before} == before


def test_a_kill_right_after_the_first_checkpoint_file_leaves_a_resumable_run(
        monkeypatch, tmp_path, corpus, reference):
    class Killed(BaseException):
        pass

    real_save = checkpoint.save

    def save_then_die(payload, path, *args):
        real_save(payload, path, *args)
        raise Killed  # the process dies before it writes the next file

    run = tmp_path / "run"
    monkeypatch.setattr(checkpoint, "save", save_then_die)
    with pytest.raises(Killed):
        train_here(monkeypatch, corpus, run)  # at step 20, the first evaluation
    assert sorted(p.name for p in run.glob("*.pt")) == ["last.pt"]  # best.pt comes second
    monkeypatch.setattr(checkpoint, "save", real_save)
    train_here(monkeypatch, corpus, run, stop_after=1, resume=True)
    assert checkpoint.load(run / "best.pt")["step"] == 20  # written from last.pt on resuming
    train_here(monkeypatch, corpus, run, resume=True)
    assert_same_run(reference(), run)
    assert_intact(run)


def test_resume_with_nothing_to_resume_starts_a_new_run(tmp_path, corpus):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"kind": "train", "step": 99, "loss": 1.0}\n{"ki')
    (run / ".last.pt.x1y2.tmp").write_bytes(b"half a checkpoint")  # left by a kill
    (run / ".ids.bin.x1y2.tmp").write_bytes(b"half an encoded corpus")  # was never removed
    (run / ".vocab.json.x1y2.tmp").write_bytes(b"half a vocabulary")
    args = ["train", *set_args(corpus, run, **{"train.max_steps": 5, "train.eval_every": 0}),
            "--resume"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "nothing to resume" in result.stdout
    assert [r["step"] for r in read_metrics(run)] == [5, 5]  # the dead run's records are gone
    assert not list(run.glob(".*.tmp"))


@pytest.mark.parametrize("change", ["data.batch_size=4", "data.seq_len=16",
                                    "data.batching=random"])
def test_resume_with_other_batching_restarts_the_data_and_keeps_the_new_config(tmp_path, corpus,
                                                                               change):
    run = tmp_path / "run"
    base = ["train", *set_args(corpus, run, **{"train.max_steps": 6, "train.eval_every": 0})]
    assert runner.invoke(app, base).exit_code == 0
    # The saved data position and hidden state fit 8 streams of 32: they cannot carry over.
    result = runner.invoke(app, ["train", "--resume", str(run), "--set", change,
                                 "--set", "train.max_steps=12"])
    assert result.exit_code == 0, result.output
    key, value = change.split("=")
    assert f"warning: {key} changed" in result.stdout and f"-> {value})" in result.stdout
    assert "resuming at step 6" in result.stdout
    assert checkpoint.load(run / "last.pt")["step"] == 12
    # config.yaml follows the resumed run, so a later plain --resume carries on from it.
    saved = load_config(run / "config.yaml")
    assert saved.train.max_steps == 12
    assert str(getattr(saved.data, key.split(".")[1])) == value
    again = runner.invoke(app, ["train", "--resume", str(run), "--set", "train.max_steps=14"])
    assert again.exit_code == 0, again.output
    assert "changed" not in again.stdout  # the same layout now: an exact continuation
    assert checkpoint.load(run / "last.pt")["step"] == 14


def test_resume_and_overwrite_together_are_refused(tmp_path, corpus):
    result = runner.invoke(app, ["train", *set_args(corpus, tmp_path / "run"), "--resume",
                                 str(tmp_path / "run"), "--overwrite"])
    assert_clean_error(result, 2, "--resume continues a run and --overwrite starts it over",
                       one_line=True)
    assert not (tmp_path / "run").exists()


def test_resume_on_another_corpus_of_the_same_length_restarts_the_data(tmp_path, corpus):
    run = tmp_path / "run"
    base = ["train", *set_args(corpus, run, **{"train.max_steps": 6, "train.eval_every": 0})]
    assert runner.invoke(app, base).exit_code == 0
    other = tmp_path / "other.txt"
    text = corpus.read_text(encoding="utf-8")
    other.write_text(text[::-1], encoding="utf-8")  # the same characters, counts and length
    result = runner.invoke(app, ["train", "--resume", str(run), "--set", f"data.path={other}",
                                 "--set", "train.max_steps=8"])
    assert result.exit_code == 0, result.output
    assert "the corpus changed since the checkpoint" in result.stdout
    # best.pt's score was on the old text: the first evaluation on the new one replaces it.
    assert "best.pt (scored on the old validation text) is replaced" in result.stdout
    assert checkpoint.load(run / "best.pt")["step"] == 8


def test_resume_with_another_model_is_refused_before_the_corpus_is_read(tmp_path, corpus):
    text = tmp_path / "corpus.txt"
    text.write_text(corpus.read_text(encoding="utf-8"), encoding="utf-8")
    run = tmp_path / "run"
    base = ["train", *set_args(text, run, **{"train.max_steps": 4, "train.eval_every": 0})]
    assert runner.invoke(app, base).exit_code == 0
    saved = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    text.unlink()  # reading it now would fail with another error: the check comes first
    result = runner.invoke(app, ["train", "--resume", str(run), "--set", "model.hidden_size=48"])
    assert_clean_error(result, 2, "'model.hidden_size' is 48 here",
                       "a resumed run keeps its model")
    assert {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()} == saved


def test_a_run_with_best_pt_but_no_last_pt_cannot_be_resumed(tmp_path, tiny_run):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes((tiny_run / "best.pt").read_bytes())
    (run / "config.yaml").write_text((tiny_run / "config.yaml").read_text())
    result = runner.invoke(app, ["train", "--resume", str(run)])
    assert_clean_error(result, 1, "best.pt but no last.pt", "--overwrite")


# ---- fine-tuning from another run ---------------------------------------------------------------
def test_init_from_encodes_new_text_with_the_checkpoints_vocabulary(tmp_path, tiny_run):
    text = tmp_path / "new.txt"
    text.write_text(POEM * 60 + "€uro ±1\n" * 10, encoding="utf-8")  # 20 unseen characters
    run = tmp_path / "tuned"
    base_shape = checkpoint.load(tiny_run / "best.pt")["model_args"]
    args = ["train", *set_args(text, run, **{"train.init_from": tiny_run, "train.max_steps": 5,
                                             "train.eval_every": 0, "model.hidden_size":
                                             base_shape["hidden_size"] + 16})]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "fine-tuning from" in result.stdout
    assert "fine-tuning keeps the checkpoint's architecture" in result.stdout
    # config.yaml says what was trained (it said the config's width)
    assert saved_config(run).model.hidden_size == base_shape["hidden_size"]
    assert "warning: 20 characters" in result.stdout and "became <unk>" in result.stdout
    tuned, base = checkpoint.load(run / "last.pt"), checkpoint.load(tiny_run / "best.pt")
    assert tuned["vocab"]["chars"] == base["vocab"]["chars"]
    assert tuned["step"] == 5  # a new run: its own step count, not the checkpoint's

    refused = runner.invoke(app, [*args, "--set", "data.unknown=error",
                                  "--set", f"train.out_dir={tmp_path / 'strict'}"])
    assert_clean_error(refused, 1, "20 characters", "not in the vocabulary", "data.unknown")


def _damage(state: dict, what: str) -> None:
    if what == "small moment":  # AdamW's fused step wrote past it: a segmentation fault
        state["optimizer"]["state"][0]["exp_avg"] = torch.zeros(5)
    elif what == "NaN moment":
        state["optimizer"]["state"][0]["exp_avg_sq"].fill_(float("nan"))
    elif what == "window":
        state["batches"]["window"] = 10**9
    elif what == "hidden width":
        state["hidden"] = tuple(h[..., :3] for h in state["hidden"])
    elif what == "layout":
        state["batch_layout"] = "x"
    elif what == "torch rng":
        state["rng"]["torch"] = torch.zeros(3, dtype=torch.uint8)
    elif what == "python rng":
        state["rng"]["python"] = [3, [1, 2], None]


@pytest.mark.parametrize("what", ["small moment", "NaN moment", "window", "hidden width",
                                  "layout", "torch rng", "python rng"])
def test_a_damaged_training_state_is_refused_naming_the_way_out(tmp_path, corpus, what):
    """The weights of last.pt are checked on loading; the rest of what resuming reads is
    checked before training goes on, and the run is left as it was."""
    run = tmp_path / "run"
    base = ["train", *set_args(corpus, run, **{"train.max_steps": 4, "train.eval_every": 0})]
    assert runner.invoke(app, base).exit_code == 0
    payload = torch.load(run / "last.pt", weights_only=False)
    _damage(payload["train_state"], what)
    torch.save(payload, run / "last.pt")
    saved = (run / "last.pt").read_bytes()
    result = runner.invoke(app, ["train", "--resume", str(run), "--set", "train.max_steps=8"])
    assert_clean_error(result, 1, "training state (besides the weights) is damaged",
                       "--overwrite", "train.init_from")
    assert (run / "last.pt").read_bytes() == saved


def test_a_truncated_last_pt_points_to_best_pt_not_to_itself(tmp_path, corpus):
    run = tmp_path / "run"
    base = ["train", *set_args(corpus, run, **{"train.max_steps": 4, "train.eval_every": 2})]
    assert runner.invoke(app, base).exit_code == 0
    data = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[:len(data) // 2])
    result = runner.invoke(app, ["train", "--resume", str(run)])
    assert_clean_error(result, 1, "last.pt is damaged", "e.g. the run's best.pt")


def test_init_from_given_on_a_resume_is_said_to_be_ignored(tmp_path, corpus, tiny_run):
    run = tmp_path / "run"
    base = ["train", *set_args(corpus, run, **{"train.max_steps": 4, "train.eval_every": 0})]
    assert runner.invoke(app, base).exit_code == 0
    result = runner.invoke(app, ["train", "--resume", str(run), "--set", "train.max_steps=6",
                                 "--set", f"train.init_from={tiny_run / 'best.pt'}"])
    assert result.exit_code == 0, result.output
    assert "train.init_from" in result.output and "is not read when resuming" in result.output
    assert checkpoint.load(run / "last.pt")["step"] == 6
