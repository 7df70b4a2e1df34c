"""Budget-sized training: `model.size: auto` measures this machine and picks the model and its
training for `train.max_time`; keys the user set are kept; the choice is written down."""

import math
import signal

import pytest
import torch

from charrnn import autosize, speed
from charrnn.config import load_config
from charrnn.errors import ConfigError, TrainingInterrupted
from charrnn.model import ModelArgs
from charrnn.rundir import saved_config
from charrnn.train import train
from conftest import tiny_overrides


class Messages:
    def __init__(self):
        self.lines = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def update(self, *args):
        pass

    def message(self, text, kind="info"):
        self.lines.append(text)


def auto_overrides(corpus, run, **extra):
    values = {"data.path": str(corpus), "train.out_dir": str(run), "model.size": "auto",
              "train.max_time": 4, "train.device": "cpu", "train.log_every": 1000,
              "model.embedding_dim": 16, **extra}
    return [f"{k}={v}" for k, v in values.items()]


def test_more_parameters_and_more_characters_predict_a_lower_loss():
    small, large = autosize.predicted_loss(1e5, 1e7, 10**6), autosize.predicted_loss(1e6, 1e7,
                                                                                      10**6)
    assert large < small
    assert autosize.predicted_loss(1e6, 2e7, 10**8) < autosize.predicted_loss(1e6, 1e7, 10**8)


def test_characters_read_again_count_less():
    corpus = 1_000_000
    assert autosize.effective_chars(5e5, corpus) == 5e5
    once_more = autosize.effective_chars(2e6, corpus)
    assert corpus < once_more < 2e6
    far = autosize.effective_chars(1e9, corpus)
    assert far < corpus * (1 + autosize.REPEAT_HALF_LIFE / math.log(2)) + 1


def test_learning_rate_falls_with_width_within_bounds():
    rates = [autosize.learning_rate_for(h, 1) for h in autosize.WIDTHS]
    assert rates == sorted(rates, reverse=True)
    assert all(2e-3 <= r <= 1e-2 for r in rates)


def test_training_speed_is_measured_without_moving_the_random_state():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    args = ModelArgs(vocab_size=20, embedding_dim=8, hidden_size=16)
    assert speed.training_speed(args, 4, 8, torch.device("cpu"), "fp32", 0.01) > 0
    assert torch.equal(torch.rand(3), expected)


def test_bf16_is_chosen_only_where_it_is_clearly_faster():
    assert speed.choose_precision({"fp32": 100.0, "bf16": 105.0}) == "fp32"
    assert speed.choose_precision({"fp32": 100.0, "bf16": 150.0}) == "bf16"
    assert speed.choose_precision({"fp32": 100.0}) == "fp32"


def test_auto_size_picks_measures_and_writes_down_the_choice(tmp_path, corpus):
    run, view = tmp_path / "run", Messages()
    result = train(load_config(None, auto_overrides(corpus, run)), view=view)
    line = next(text for text in view.lines if text.startswith("model.size auto:"))
    assert "chars/s" in line and "steps)" in line and "measured in" in line
    saved = saved_config(run)
    assert saved.model.hidden_size in autosize.WIDTHS and saved.model.num_layers in (1, 2)
    assert saved.train.precision in ("fp32", "bf16") and saved.train.max_steps is None
    assert saved.model.embedding_dim == 16  # a key the user set is kept
    # The measuring counts in the budget: training stops when the whole budget is spent.
    assert result.elapsed == pytest.approx(4, abs=1.5)
    # Resuming from the run's own config plans nothing anew.
    again = Messages()
    train(saved.replace(train={"max_time": 5}), resume=run, view=again)
    assert not any(text.startswith("model.size auto") for text in again.lines)
    assert saved_config(run).model.hidden_size == saved.model.hidden_size


@pytest.mark.parametrize("how", ["--set", "Config.replace"])
def test_keys_the_user_sets_limit_the_candidates(tmp_path, corpus, how):
    """Set in a config file, by --set, or in code: Config.replace's keys were taken as free."""
    run, view = tmp_path / "run", Messages()
    if how == "--set":
        config = load_config(None, auto_overrides(corpus, run, **{
            "model.num_layers": 2, "model.hidden_size": 32, "optim.lr": 0.003,
            "train.precision": "fp32"}))
    else:
        config = load_config(None, auto_overrides(corpus, run)).replace(
            model={"num_layers": 2, "hidden_size": 32}, optim={"lr": 0.003},
            train={"precision": "fp32"})
    train(config, view=view)
    saved = saved_config(run)
    assert (saved.model.num_layers, saved.model.hidden_size, saved.optim.lr) == (2, 32, 0.003)
    assert saved.train.precision == "fp32"
    assert "2x32" in next(text for text in view.lines if text.startswith("model.size auto"))


def test_auto_size_needs_a_time_budget_and_no_init_from(tmp_path, corpus, tiny_run):
    with pytest.raises(ConfigError, match="train.max_time"):
        load_config(None, ["model.size=auto"])
    with pytest.raises(ConfigError, match="'model.size' is auto but 'train.init_from' is set"):
        load_config(None, auto_overrides(corpus, tmp_path / "r", **{  # before any measuring
            "train.init_from": tiny_run}))


def test_precision_auto_is_measured_and_recorded(tmp_path, corpus):
    run, view = tmp_path / "run", Messages()
    train(load_config(None, tiny_overrides(corpus, run, **{"train.precision": "auto"})),
          view=view)
    assert any(text.startswith("precision auto:") for text in view.lines)
    assert saved_config(run).train.precision in ("fp32", "bf16")


def test_bf16_where_the_kernels_refuse_it_is_a_config_error_and_auto_keeps_fp32(
        tmp_path, corpus, monkeypatch):
    from charrnn import devices

    monkeypatch.setattr(devices, "bf16_runs", lambda device, cell="lstm": False)
    with pytest.raises(ConfigError, match="do not train in bf16"):
        train(load_config(None, tiny_overrides(corpus, tmp_path / "a",
                                               **{"train.precision": "bf16"})))
    args = ModelArgs(vocab_size=30, hidden_size=16)
    assert speed.precisions_to_try("auto", args, 4, torch.device("cpu")) == ["fp32"]
    # One precision to try: nothing is timed (fp32 alone cost every start a second).
    monkeypatch.setattr(speed, "training_speed", None)
    assert speed.fastest_precision(args, 4, 16, torch.device("cpu")) == ("fp32", {})
    run, view = tmp_path / "b", Messages()
    train(load_config(None, tiny_overrides(corpus, run, **{"train.precision": "auto"})),
          view=view)
    assert "precision auto: fp32 (bf16 is not fast on this device: nothing to time)" \
        in view.lines


def test_the_bf16_trial_matches_what_training_does():
    from charrnn import devices

    for cell in ("rnn", "lstm", "gru"):
        runs = devices.bf16_runs(torch.device("cpu"), cell)
        if runs:  # then a real bf16 step of that cell trains
            args = ModelArgs(vocab_size=30, cell=cell, hidden_size=16)
            assert speed.training_speed(args, 4, 8, torch.device("cpu"), "bf16", 0.0) > 0


def test_a_stop_signal_ends_the_measuring_at_once(corpus, tmp_path):
    """Ctrl-C while candidates are measured stops there (it waited for the grace period)."""
    config = load_config(None, auto_overrides(corpus, tmp_path / "run",
                                              **{"train.max_time": 600}))
    asked = []

    def stop_signal():
        asked.append(1)
        return signal.SIGINT if len(asked) > 1 else None

    with pytest.raises(TrainingInterrupted, match="stopped by SIGINT while measuring") as stopped:
        autosize.plan(config, 60, 100_000, torch.device("cpu"), stop_signal=stop_signal)
    assert stopped.value.exit_code == 130 and len(asked) == 2


def test_measuring_a_huge_budget_is_bounded_and_a_step_budget_bounds_the_plan(
        corpus, tmp_path, monkeypatch):
    """5% of max_time: 1e12 kept a run measuring for hours; a max_steps the user set ends
    training long before max_time, and the plan predicts for the characters it allows."""
    monkeypatch.setattr(autosize, "MAX_MEASURE_S", 0.1)
    config = load_config(None, auto_overrides(corpus, tmp_path / "run", **{
        "train.max_time": 1e12, "train.max_steps": 20, "model.num_layers": 1,
        "train.precision": "fp32", "data.batch_size": 4, "data.seq_len": 16}))
    plan = autosize.plan(config, 60, 100_000, torch.device("cpu"))
    assert plan.seconds < 0.1 * len(autosize.WIDTHS) + 5
    assert all(candidate.chars <= 20 * 4 * 16 for candidate in plan.measured)
    assert plan.config.train.max_steps == 20  # the user's, kept


def test_a_budget_used_up_by_measuring_is_refused_not_saved_untrained(tmp_path, corpus):
    run = tmp_path / "run"
    config = load_config(None, auto_overrides(corpus, run, **{"train.max_time": 0.001}))
    # Said where its cause is known: a measured step longer than the time left (with a 10 s
    # budget and a 512x512 batch: "give more time", when the batch was the cause).
    with pytest.raises(ConfigError, match=r"'train.max_time' \(0.001 s\) leaves no time to train "
                       r"after measuring .*: one training step of 1x\d+ at batch 16x64 takes "
                       "about .* s here; give more time, or lower data.batch_size"):
        train(config)
    assert not (run / "best.pt").exists() and not (run / "last.pt").exists()


# ---- the plan's rules, on a machine of known speed ------------------------------------------
def known_speed(monkeypatch, fastest: float) -> None:
    """Training speeds in proportion to each shape's work: `fastest` chars/s for 1x128."""
    def training_speed(args, batch, seq_len, device, precision="fp32", seconds=0.3):
        def work(layers, hidden):
            return autosize._flops_per_char(layers, hidden, args.embedding_dim) \
                + hidden * args.vocab_size
        return fastest * work(1, 128) / work(args.num_layers, args.hidden_size)

    monkeypatch.setattr(speed, "training_speed", training_speed)
    monkeypatch.setattr(speed, "precisions_to_try", lambda *args, **kwargs: ["fp32"])


def auto_config(**extra):
    values = {"model.size": "auto", "train.max_time": 600, "train.device": "cpu", **extra}
    return load_config(None, [f"{k}={v}" for k, v in values.items()])


def test_a_budget_in_the_rules_range_is_sized_by_it_and_written_down_as_fixed(monkeypatch):
    known_speed(monkeypatch, 60_000)
    plan = autosize.plan(auto_config(), 65, 1_000_000, torch.device("cpu"))
    assert plan.chosen.hidden > 128 and "predicted" in plan.describe()
    assert plan.warning is None and plan.steps > 1_000
    assert plan.config.model.size == "fixed"  # a rerun from config.yaml measures nothing
    assert plan.config.train.eval_chars == autosize.MAX_EVAL_CHARS


def test_below_the_rules_range_the_fastest_is_taken_and_a_budget_too_small_is_said(
        monkeypatch):
    """4 s predicted 118 nats/char for 1x128 and trained one step without a word."""
    known_speed(monkeypatch, 30_000)
    plan = autosize.plan(auto_config(**{"train.max_time": 3}), 65, 1_000_000,
                         torch.device("cpu"))
    assert plan.chosen.name == "1x128" and len(plan.measured) == 1  # the rest read fewer
    assert "too few characters for the rule" in plan.describe()
    assert plan.steps < autosize.MIN_USEFUL_STEPS
    assert plan.warning.startswith("the budget (train.max_time, train.max_steps) allows only")


def test_a_tiny_corpus_is_not_given_a_model_that_would_memorise_it(monkeypatch):
    known_speed(monkeypatch, 60_000)
    plan = autosize.plan(auto_config(), 65, 3_000, torch.device("cpu"))
    assert [c.name for c in plan.measured] == ["1x128"]
    # Read thousands of times: said, and looked at often enough for best.pt to catch the
    # early best (six looks found it long past).
    assert "training text about " in plan.warning and "best.pt keeps" in plan.warning
    assert plan.steps // plan.config.train.eval_every == autosize.MAX_EVALUATIONS


def test_the_batch_splits_evenly_over_the_processes(monkeypatch):
    """16 streams over 3 processes stopped the run after measuring."""
    known_speed(monkeypatch, 60_000)
    plan = autosize.plan(auto_config(), 65, 1_000_000, torch.device("cpu"), processes=3)
    assert plan.config.data.batch_size == 18


def test_evaluations_are_sized_to_the_budget(monkeypatch):
    """10,000 characters of a 125,000-character vocabulary took 40 s of a 30 s budget."""
    known_speed(monkeypatch, 60_000)
    plan = autosize.plan(auto_config(**{"train.max_time": 30}), 125_000, 1_000_000,
                         torch.device("cpu"))
    looks = plan.steps // plan.config.train.eval_every
    evaluating = (looks + 1) * plan.config.train.eval_chars \
        * autosize.SCORING_COST / plan.chosen.chars_per_s
    assert plan.config.train.eval_chars == 500 or evaluating <= 0.04 * 30


def test_candidates_the_machine_cannot_train_are_left_out(monkeypatch):
    from charrnn import memory
    from charrnn.errors import CharRNNError

    def check_training(args, *rest, **kwargs):
        if args.hidden_size > 192:
            raise CharRNNError(f"training {args.hidden_size} needs more memory")

    monkeypatch.setattr(memory, "check_training", check_training)
    known_speed(monkeypatch, 1e7)  # where the rule would pick the widest
    plan = autosize.plan(auto_config(), 65, 10_000_000, torch.device("cpu"))
    assert {c.hidden for c in plan.measured} <= {128, 192}
    with pytest.raises(CharRNNError, match="training 256 needs more memory"):
        autosize.plan(auto_config(**{"model.hidden_size": 256}), 65, 1_000_000,
                      torch.device("cpu"))


def test_bf16_set_beside_auto_is_refused_as_training_refuses_it(monkeypatch):
    """It measured in bf16 and ended in a traceback from the LSTM's kernels."""
    from charrnn import devices

    monkeypatch.setattr(devices, "bf16_runs", lambda device, cell="lstm": False)
    with pytest.raises(ConfigError, match="LSTM layers do not train in bf16"):
        autosize.plan(auto_config(**{"train.precision": "bf16"}), 65, 1_000_000,
                      torch.device("cpu"))


def test_a_shape_set_by_the_user_is_said_to_be_kept(monkeypatch):
    known_speed(monkeypatch, 60_000)
    plan = autosize.plan(auto_config(**{"model.hidden_size": 256, "model.num_layers": 1}), 65,
                         1_000_000, torch.device("cpu"))
    assert plan.describe().endswith("the shape was not chosen: model.hidden_size and "
                                    "model.num_layers are set (keys you set are kept)")


def test_candidates_are_measured_with_the_runs_threads_and_share_of_the_batch(monkeypatch):
    """Measured on the machine's default threads and the whole batch, a torchrun run's speed
    was overstated 2-3 times (1,031 steps predicted, 392 trained)."""
    seen = []

    def training_speed(args, batch, seq_len, device, precision="fp32", seconds=0.3):
        seen.append((torch.get_num_threads(), batch))
        return 60_000.0

    monkeypatch.setattr(speed, "training_speed", training_speed)
    monkeypatch.setattr(speed, "precisions_to_try", lambda *args, **kwargs: ["fp32"])
    before = torch.get_num_threads()
    autosize.plan(auto_config(**{"train.threads": 1}), 65, 1_000_000, torch.device("cpu"),
                  processes=2)
    assert seen and all(measured == (1, 8) for measured in seen)
    assert torch.get_num_threads() == before
    with pytest.raises(ConfigError, match="does not split evenly over 3 processes"):
        autosize.plan(auto_config(**{"data.batch_size": 16}), 65, 1_000_000,
                      torch.device("cpu"), processes=3)  # before measuring


def test_evaluations_are_at_least_ten_steps_apart(monkeypatch):
    """A 7-step prediction evaluated at every one of the 127 steps the run then took."""
    known_speed(monkeypatch, 3_000)
    plan = autosize.plan(auto_config(**{"train.max_time": 3}), 65, 1_000_000,
                         torch.device("cpu"))
    assert plan.config.train.eval_every == autosize.MIN_EVAL_EVERY
