"""The training loop through its public interface: `train(config, view=..., stop=...)`.

What the loop promises: it logs and evaluates when the config says, keeps the best weights,
follows the learning-rate schedule over its budget, reports through the view it is given (and
prints nothing itself), and stops cleanly when asked.
"""

import math
import random
import signal
import time

import pytest
import torch

from charrnn import checkpoint
from charrnn.config import load_config
from charrnn.errors import CharRNNWarning, ConfigError, TrainingInterrupted
from charrnn.metrics import read_metrics
from charrnn.model import CharRNN
from charrnn.train import RunResult, Trainer, train
from conftest import StopAfter, tiny_overrides


class RecordingView:
    """A TrainingView that remembers what a person would have seen."""

    def __init__(self):
        self.updates, self.messages, self.entered = [], [], 0

    def __enter__(self):
        self.entered += 1
        return self

    def __exit__(self, *exc):
        pass

    def update(self, step, fraction, fields):
        self.updates.append((step, fraction, fields))

    def message(self, text, kind="info"):
        self.messages.append((kind, text))


def config_for(corpus, run, **extra):
    return load_config(None, tiny_overrides(corpus, run, **extra))


def test_logs_evaluations_and_checkpoints_follow_the_config(tmp_path, corpus):
    run = tmp_path / "run"
    result = train(config_for(corpus, run, **{"train.max_steps": 30, "train.eval_every": 10,
                                              "train.log_every": 5}))
    assert isinstance(result, RunResult) and result.step == 30 and result.run_dir == run
    records = read_metrics(run)
    assert [r["step"] for r in records if r["kind"] == "train"] == [5, 10, 15, 20, 25, 30]
    # The last step of a step budget is scored once, by the final evaluation.
    assert [(r["step"], r["final"]) for r in records if r["kind"] == "eval"] == [
        (10, False), (20, False), (30, True)]
    assert result.final.loss == pytest.approx(records[-1]["val_loss"])
    best = min(r["val_loss"] for r in records if r["kind"] == "eval")
    assert result.best_val_loss == pytest.approx(best)
    assert checkpoint.load(run / "best.pt")["val_loss"] == pytest.approx(best)
    assert checkpoint.load(run / "last.pt")["step"] == 30
    assert (run / "config.yaml").is_file()


def test_the_learning_rate_warms_up_then_decays_to_the_minimum(tmp_path, corpus):
    run = tmp_path / "run"
    train(config_for(corpus, run, **{"train.max_steps": 40, "train.log_every": 1,
                                     "train.eval_every": 0, "optim.lr": 0.01,
                                     "optim.min_lr": 0.001, "optim.warmup": 0.25}))
    lrs = [r["lr"] for r in read_metrics(run) if r["kind"] == "train"]
    peak = lrs.index(max(lrs))
    assert max(lrs) == pytest.approx(0.01)
    assert lrs[:peak] == sorted(lrs[:peak]) and lrs[peak:] == sorted(lrs[peak:], reverse=True)
    assert 8 <= peak <= 11  # a quarter of the 40 steps
    assert lrs[-1] == pytest.approx(0.001, rel=0.05)


def test_training_lowers_the_loss(tmp_path, corpus):
    run = tmp_path / "run"
    result = train(config_for(corpus, run, **{"train.max_steps": 80, "train.eval_every": 0,
                                              "train.log_every": 10, "optim.lr": 0.01}))
    losses = [r["loss"] for r in read_metrics(run) if r["kind"] == "train"]
    assert losses[-1] < losses[0] - 0.5
    assert result.final.loss < math.log(result.final.chars)  # better than nothing at all


def test_reports_through_the_view_and_prints_nothing(tmp_path, corpus, capsys):
    view = RecordingView()
    train(config_for(corpus, tmp_path / "run", **{"train.sample_every": 1}), view=view)
    assert capsys.readouterr() == ("", "")
    assert view.entered == 1
    kinds = [kind for kind, _ in view.messages]
    assert kinds[0] == "info" and view.messages[0][1].startswith("device: cpu")
    assert kinds.count("result") == 1 and kinds[-2:] == ["result", "sample"]
    assert "sample at step 30" in view.messages[-1][1]
    steps = [step for step, _, _ in view.updates]
    assert steps == [5, 10, 15, 20, 25, 30]
    fractions = [fraction for _, fraction, _ in view.updates]
    assert fractions == sorted(fractions) and all(0 < f < 1 for f in fractions)
    fields = view.updates[-1][2]
    assert {"loss", "chars_per_sec", "lr", "epoch", "device", "val_loss"} <= fields.keys()


def test_without_a_view_training_is_silent(tmp_path, corpus, capsys):
    train(config_for(corpus, tmp_path / "run"))
    assert capsys.readouterr() == ("", "")


def test_without_a_view_warnings_go_to_pythons_warnings(tmp_path, corpus, capsys):
    """A notebook's train(config) lost every warning: the view of nobody dropped them."""
    config = config_for(corpus, tmp_path / "run", **{"optim.schedule": "cosine",
                                                     "optim.lr": 0.01, "optim.min_lr": 0.05})
    with pytest.warns(CharRNNWarning, match=r"optim.min_lr \(0.05\) is above optim.lr"):
        train(config)
    assert capsys.readouterr() == ("", "")


def test_a_stop_is_a_keyboard_interrupt_that_a_sweep_catching_exception_does_not_swallow(
        tmp_path, corpus):
    finished = []
    with pytest.raises(TrainingInterrupted):
        for lr in (0.001, 0.003):
            try:
                train(config_for(corpus, tmp_path / str(lr), **{"optim.lr": lr}),
                      stop=StopAfter(3))
                finished.append(lr)
            except Exception:  # a failed run: on to the next
                continue
    assert finished == [] and not (tmp_path / "0.003").exists()


def test_a_signal_during_the_final_evaluation_still_stops_the_caller(tmp_path, corpus):
    """It was swallowed: train() returned as if nothing had been asked."""
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as stopped:
        train(config_for(corpus, run, **{"train.max_steps": 10}), stop=StopAfter(11))
    assert str(stopped.value) == (f"stopped by SIGINT as the run ended at step 10: it is "
                                  f"complete, with {run / 'last.pt'} saved")
    assert stopped.value.exit_code == 130
    final = checkpoint.load(run / "last.pt")
    assert final["step"] == 10 and final["val_loss"] is not None  # the run is whole


def test_a_stop_survives_pickling_with_its_exit_code():
    """A sweep's worker process hands its exception back pickled: this one could not be
    unpickled (a broken process pool)."""
    import pickle

    again = pickle.loads(pickle.dumps(TrainingInterrupted("stopped by SIGTERM", 143)))
    assert isinstance(again, TrainingInterrupted) and again.exit_code == 143
    assert str(again) == "stopped by SIGTERM"


def test_a_stopped_run_closes_its_loggers(tmp_path, corpus, monkeypatch):
    """TensorBoard's writer (a thread and a file) was left open by every stopped run."""
    from charrnn.metrics import JsonlLogger

    closed = []
    monkeypatch.setattr(JsonlLogger, "close", lambda self: closed.append(self.path))
    with pytest.raises(TrainingInterrupted):
        train(config_for(corpus, tmp_path / "run"), stop=StopAfter(3))
    assert len(closed) == 1


def test_a_stop_request_saves_the_step_and_says_how_to_continue(tmp_path, corpus):
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as stopped:
        train(config_for(corpus, run), stop=StopAfter(7, signal.SIGTERM))
    assert stopped.value.exit_code == 143
    assert "stopped by SIGTERM at step 7" in str(stopped.value)
    assert f"charrnn train --resume {run}" in str(stopped.value)
    assert checkpoint.load(run / "last.pt")["step"] == 7
    resumed = train(config_for(corpus, run), resume=True)
    assert resumed.step == 30


def test_a_time_budget_ends_training_and_sets_the_schedule(tmp_path, corpus):
    run = tmp_path / "run"
    result = train(config_for(corpus, run, **{"train.max_steps": "null", "train.max_time": 1.5,
                                              "train.eval_every": 0, "train.log_every": 1}))
    assert 1.5 <= result.elapsed < 10 and result.step > 1
    fractions = [r["elapsed"] / 1.5 for r in read_metrics(run) if r["kind"] == "train"]
    assert fractions[-1] >= 0.9  # the run used its budget, not a step count


def test_a_training_step_updates_every_weight(tmp_path, corpus):
    from charrnn.distributed import World
    from charrnn.metrics import SilentView
    from charrnn.rundir import RunDir

    config = config_for(corpus, tmp_path / "run")
    trainer = Trainer(config, RunDir(tmp_path / "run"), World(), SilentView())
    assert isinstance(trainer.model, CharRNN)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    loss, norm = trainer.train_step()
    assert loss.dim() == 0 and math.isfinite(loss.item()) and norm is not None
    after = trainer.model.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)
    assert trainer.state is not None  # the hidden state carried to the next window


def test_a_signal_in_a_notebook_stops_training_without_ending_the_process(tmp_path, corpus):
    """Ctrl-C ("interrupt kernel") saves and raises TrainingInterrupted; the hard exit after
    train.preempt_grace is the command line's (and torchrun's), never a library caller's."""

    class InterruptedView(RecordingView):
        def update(self, step, fraction, fields):
            super().update(step, fraction, fields)
            signal.raise_signal(signal.SIGINT)
            time.sleep(0.6)  # still running past the grace period below

    config = config_for(corpus, tmp_path / "run",
                        **{"train.max_steps": 50, "train.log_every": 5,
                           "train.preempt_grace": 0.2})
    with pytest.raises(TrainingInterrupted):
        train(config, view=InterruptedView())
    assert 5 <= checkpoint.load(tmp_path / "run" / "last.pt")["step"] <= 6  # the next step
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_config_built_in_code_gets_the_config_files_checks(tmp_path, corpus):
    config = config_for(corpus, tmp_path / "run")
    with pytest.raises(ConfigError, match="'train.max_steps' must be at least 1"):
        train(config.replace(train={"max_steps": 0}))
    with pytest.raises(ConfigError, match="'model.cell' must be one of"):
        train(config.replace(model={"cell": "transformer"}))
    assert not (tmp_path / "run").exists()


def test_the_callers_random_numbers_and_threads_are_kept(tmp_path, corpus):
    threads = torch.get_num_threads()
    expected = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        random.seed(seed)
        expected.append((torch.rand(1).item(), random.random()))
    seen = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        random.seed(seed)
        train(config_for(corpus, tmp_path / f"run{seed}",
                         **{"train.max_steps": 3, "train.threads": 1}))
        seen.append((torch.rand(1).item(), random.random()))
        assert torch.get_num_threads() == threads
    assert seen == expected


def test_a_view_with_update_and_message_alone_will_do(tmp_path, corpus):
    class Plain:
        def __init__(self):
            self.steps = []

        def update(self, step, fraction, fields):
            self.steps.append(step)

        def message(self, text, kind="info"):
            pass

    view = Plain()
    train(config_for(corpus, tmp_path / "run", **{"train.max_steps": 4, "train.log_every": 2}),
          view=view)
    assert view.steps == [2, 4]


def test_a_minimum_learning_rate_above_the_peak_is_warned_about(tmp_path, corpus):
    view = RecordingView()
    train(config_for(corpus, tmp_path / "run", **{"train.max_steps": 2, "optim.lr": 1e-4,
                                                  "optim.min_lr": 1e-3}), view=view)
    assert ("warning", "optim.min_lr (0.001) is above optim.lr (0.0001): the learning rate "
            "rises to it as training goes on; lower optim.min_lr") in view.messages
    quiet = RecordingView()
    train(config_for(corpus, tmp_path / "run2", **{"train.max_steps": 2}), view=quiet)
    assert not any("optim.min_lr" in text for _, text in quiet.messages)
