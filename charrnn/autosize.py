"""Fitting the model and its training to a time budget on this machine (`model.size: auto`).

1. **Measure** the machine (at most `CALIBRATION_SHARE` of the budget, counted in it): the
   training speed, in characters per second, of every candidate shape, in every precision
   worth trying here (speed.py).
2. **Predict** each candidate's validation loss after the characters it can read in the time
   left, with a rule fitted to experiments (BENCHMARKS.md, "Sizing a model to its budget"):

       loss = E + A / N^alpha + B / D^beta + DEPTH * (layers - 1)

   N: the model's parameters; D: the characters it reads, counted at a discount once they
   repeat the corpus (data read again teaches less; `REPEAT_HALF_LIFE`); a second layer
   costs a fixed amount at the budgets measured (it learns slower than its parameters say).
3. **Keep** the lowest prediction and set the training that goes with that width (batch,
   window, learning rate, dropout, weight decay) by the rules below. A key the user set is
   never changed, and candidates that contradict one (say `model.num_layers: 2`) are left out.

The same function resolves `train.precision: auto` for a model of fixed size: the faster of
fp32 and bf16 by measurement. The result is a config with no `auto` left in it, written to the
run's config.yaml, so a resume or a rerun from it trains the same way.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from charrnn import memory, speed
from charrnn.config import Config
from charrnn.errors import TrainingInterrupted
from charrnn.interrupts import exit_code, signal_name
from charrnn.model import CharRNN, ModelArgs

CALIBRATION_SHARE = 0.05  # of the time budget, at most, spent measuring candidates
MIN_MEASURE_S = 0.05  # each measurement runs at least this long (two steps, whatever it takes)
# ... and at most this long: a longer one reads the speed no better, and 5% of a budget of
# days (or of max_time: 1e12) kept a run measuring for hours before its first step.
MAX_MEASURE_S = 3.0
WIDTHS = (128, 192, 256, 384, 512, 768, 1024)
DEPTHS = (1, 2)
EVALUATION_SHARE = 0.03  # of the budget left for periodic and final evaluation

# The loss rule, fitted (bench/fit_sizing.py) to 14 runs on tiny-shakespeare: 0.4M to 78M
# characters, 0.1M to 3.3M parameters, 1 and 2 layers; rms error 0.029 nats/char, 0.057 for a
# shape left out of the fit (BENCHMARKS.md). Only differences between candidates matter for
# the choice, so a corpus easier or harder than Shakespeare shifts E, A and B, but rarely the
# best shape.
E, A, ALPHA, B, BETA, DEPTH = 1.233, 491.8, 0.65, 543.0, 0.525, 0.098
# The runs could not pin this down (78 passes over 1 MB still improved a small model): 40 keeps
# a tiny corpus from counting as fresh text when it is read hundreds of times.
REPEAT_HALF_LIFE = 40.0  # passes after which one more pass over the corpus counts half

# Keys the plan may set (besides the shape), each left alone when the user gave it.
PLANNED = ("model.cell", "model.embedding_dim", "model.hidden_size", "model.num_layers",
           "model.dropout", "data.batch_size", "data.seq_len", "optim.lr",
           "optim.weight_decay", "optim.min_lr", "optim.warmup", "train.max_steps",
           "train.precision", "train.eval_every", "train.eval_chars")


@dataclass(frozen=True)
class Candidate:
    layers: int
    hidden: int
    precision: str
    chars_per_s: float = 0.0
    parameters: int = 0
    chars: float = 0.0  # characters it can read in the time left
    predicted: float = math.inf  # validation loss, nats/char

    @property
    def name(self) -> str:
        return f"{self.layers}x{self.hidden}"


@dataclass
class Plan:
    """What auto-sizing chose, and why."""

    config: Config
    chosen: Candidate | None  # None: only the precision was chosen
    measured: list[Candidate] = field(default_factory=list)
    seconds: float = 0.0  # spent measuring, counted in the time budget
    train_chars: int = 0
    precision_only: bool = False  # train.precision: auto decided, the model's size given

    @property
    def decided(self) -> bool:
        """Whether it chose anything (a resumed run's plan only adopts its checkpoint's)."""
        return bool(self.measured) or self.precision_only

    def describe(self) -> str:
        if self.chosen is None and not self.measured:
            return (f"precision auto: {self.config.train.precision} (bf16 is not fast on "
                    "this device: nothing to time)")
        if self.chosen is None:
            speeds = ", ".join(f"{c.precision} {c.chars_per_s:,.0f}" for c in self.measured)
            return (f"precision auto: {self.config.train.precision} ({speeds} chars/s, "
                    f"measured in {self.seconds:.1f} s)")
        c, cfg = self.chosen, self.config
        runners_up = sorted(self.measured, key=lambda m: m.predicted)[1:3]
        others = "".join(f", then {m.name} {m.precision} {m.predicted:.3f}" for m in runners_up)
        epochs = c.chars / max(self.train_chars, 1)
        return (f"model.size auto: {cfg.model.cell} {c.name} ({c.parameters:,} parameters, "
                f"{c.precision}) at {c.chars_per_s:,.0f} chars/s reads {c.chars / 1e6:.1f}M "
                f"chars ({epochs:.1f} epochs) in {cfg.train.max_time:g} s; predicted "
                f"{c.predicted:.3f} nats/char on text like Shakespeare's{others}; "
                f"batch {cfg.data.batch_size}x"
                f"{cfg.data.seq_len}, lr {cfg.optim.lr:.2g}, dropout {cfg.model.dropout:g}, "
                f"weight decay {cfg.optim.weight_decay:g}; {len(self.measured)} candidates "
                f"measured in {self.seconds:.1f} s")


def predicted_loss(parameters: int, chars: float, corpus_chars: int, layers: int = 1) -> float:
    """The loss rule: lower with more parameters and with more (fresh) characters read."""
    return (E + A / parameters ** ALPHA + B / effective_chars(chars, corpus_chars) ** BETA
            + DEPTH * (layers - 1))


def effective_chars(chars: float, corpus_chars: int) -> float:
    """Characters read, with each pass over the corpus after the first counting a little less
    (the k-th extra pass at 2^(-k / REPEAT_HALF_LIFE))."""
    if chars <= corpus_chars or corpus_chars <= 0:
        return max(chars, 1.0)
    extra_epochs = chars / corpus_chars - 1
    decay = math.log(2) / REPEAT_HALF_LIFE
    return corpus_chars * (1 + (1 - math.exp(-decay * extra_epochs)) / decay)


def learning_rate_for(hidden: int, layers: int) -> float:
    """Peak AdamW learning rate: 5e-3 at 512 units, larger for narrower layers."""
    lr = 5e-3 * math.sqrt(512 / hidden) / (1.25 if layers > 1 else 1.0)
    return float(f"{min(max(lr, 2e-3), 1e-2):.2g}")


def plan(config: Config, vocab_size: int, train_chars: int, device: torch.device,
         processes: int = 1, already: float = 0.0,
         stop_signal: Callable[[], int | None] = lambda: None) -> Plan:
    """Resolve `model.size: auto` and `train.precision: auto` for this machine.

    `train_chars`: the training split's length; `processes`: data-parallel processes that
    will share the work; `already`: seconds of the budget spent before this;
    `stop_signal`: the stop signal received, if any, asked between measurements (raises
    TrainingInterrupted: nothing has been trained yet).
    """
    sizing = config.model.size == "auto"
    if not sizing and config.train.precision != "auto":
        return Plan(config, None)
    start = time.perf_counter()
    given, t = config.given, config.train
    batch = config.data.batch_size if "data.batch_size" in given else 16
    seq_len = config.data.seq_len if "data.seq_len" in given else 64
    if not sizing:
        args = ModelArgs(vocab_size=vocab_size, **config.model.shape())
        # Measuring builds and trains the model: one the machine cannot hold is refused
        # first, as training would refuse it (the measurement thrashed the memory instead).
        memory.check_training(args, config.data, train_chars, device)
        precision, speeds = speed.fastest_precision(args, batch, seq_len, device)
        measured = [Candidate(1, 0, p, s) for p, s in speeds.items()]
        spent = time.perf_counter() - start
        return Plan(config.replace(train={"precision": precision}), None, measured, spent,
                    precision_only=True)

    base = config.model
    shapes = sorted(_shapes(config), key=lambda shape: _flops_per_char(*shape, base.embedding_dim))
    # bf16 is probed at a middling width: quick, and where the choice usually falls.
    probe = ModelArgs(vocab_size=vocab_size, **{**base.shape(), "hidden_size": 256})
    precisions = speed.precisions_to_try(t.precision, probe, batch, device)
    allowance = max(CALIBRATION_SHARE * t.max_time - already, 0.0)
    # Seconds of training the prediction assumes: what is left once measuring is done.
    left = max(t.max_time - already - allowance, 0.0) * (1 - EVALUATION_SHARE)
    # A step budget the user set ends training first, bounding what any candidate reads.
    max_chars = t.max_steps * batch * seq_len \
        if t.max_steps and "train.max_steps" in given else math.inf
    measured: list[Candidate] = []
    worse = 0  # candidates in a row predicted worse than the best so far
    for index, (layers, hidden) in enumerate(shapes):
        remaining = allowance - (time.perf_counter() - start)
        # Shapes come cheapest first: once time is up, or the larger ones keep predicting
        # worse (fewer characters outweigh more parameters), the rest would be worse still.
        if measured and (remaining <= 0 or worse >= 2):
            break
        per_measure = min(max(remaining / ((len(shapes) - index) * len(precisions)),
                              MIN_MEASURE_S), MAX_MEASURE_S)
        args = ModelArgs(vocab_size=vocab_size, **{**base.shape(), "num_layers": layers,
                                                   "hidden_size": hidden})
        parameters = CharRNN(args).num_parameters()
        best = min((c.predicted for c in measured), default=math.inf)
        for precision in precisions:
            _check_stop(stop_signal())
            chars_per_s = processes * speed.training_speed(args, batch, seq_len, device,
                                                           precision, per_measure)
            measured.append(_predict(Candidate(layers, hidden, precision, chars_per_s,
                                               parameters), left, train_chars, max_chars))
        worse = worse + 1 if min(c.predicted for c in measured[-len(precisions):]) > best else 0
    spent = time.perf_counter() - start
    left = max(t.max_time - already - spent, 0.0) * (1 - EVALUATION_SHARE)
    measured = [_predict(c, left, train_chars, max_chars) for c in measured]
    chosen = min(measured, key=lambda c: (c.predicted, c.parameters))
    resolved = _apply(config, chosen, batch, seq_len)
    return Plan(resolved, chosen, measured, spent, train_chars)


def _flops_per_char(layers: int, hidden: int, embedding: int) -> int:
    """Multiply-adds of the recurrent layers per character: how the cost of a shape grows."""
    return sum(4 * hidden * ((embedding if i == 0 else hidden) + hidden) for i in range(layers))


def _shapes(config: Config) -> list[tuple[int, int]]:
    given = config.given
    depths = (config.model.num_layers,) if "model.num_layers" in given else DEPTHS
    widths = (config.model.hidden_size,) if "model.hidden_size" in given else WIDTHS
    return [(layers, hidden) for layers in depths for hidden in widths]


def _check_stop(signum: int | None) -> None:
    if signum:
        raise TrainingInterrupted(f"stopped by {signal_name(signum)} while measuring the "
                                  "candidate models (model.size: auto); nothing was trained",
                                  exit_code=exit_code(signum))


def _predict(candidate: Candidate, seconds: float, train_chars: int,
             max_chars: float = math.inf) -> Candidate:
    chars = min(candidate.chars_per_s * seconds, max_chars)
    return dataclasses.replace(candidate, chars=chars, predicted=predicted_loss(
        candidate.parameters, chars, train_chars, candidate.layers))


def _apply(config: Config, chosen: Candidate, batch: int, seq_len: int) -> Config:
    """The config with the plan's values wherever the user did not set the key."""
    steps = max(int(chosen.chars / (batch * seq_len)), 1)
    planned = {
        "model.hidden_size": chosen.hidden, "model.num_layers": chosen.layers,
        "model.dropout": 0.1, "data.batch_size": batch, "data.seq_len": seq_len,
        "optim.lr": learning_rate_for(chosen.hidden, chosen.layers),
        "optim.weight_decay": 0.1, "optim.min_lr": 1e-5, "optim.warmup": 0.02,
        "train.max_steps": None, "train.precision": chosen.precision,
        # About six looks at the validation text on the way, each on its first 10k chars.
        "train.eval_every": max(steps // 6, 1), "train.eval_chars": 10_000,
    }
    return _fill(config, planned)


def adopt(config: Config, stored: dict) -> Config:
    """For a resumed run: what the checkpoint's run planned, wherever the user did not set
    the key now, so that resuming never plans anew."""
    return _fill(config, {key: stored.get(key.split(".")[0], {}).get(key.split(".")[1])
                          for key in PLANNED if key.split(".")[1] in
                          stored.get(key.split(".")[0], {})})


def _fill(config: Config, values: dict) -> Config:
    """`values` ("section.key": value) wherever the user did not set the key or said auto."""
    sections: dict[str, dict] = {}
    for key, value in values.items():
        section, name = key.split(".")
        if key not in config.given or getattr(getattr(config, section), name) == "auto":
            sections.setdefault(section, {})[name] = value
    return config.replace(**sections)
