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
3. **Keep** the lowest prediction and set the training that goes with that width (its
   learning rate; the batch, window, dropout and weight decay the rule was fitted with; the
   evaluations, sized to the budget) by the rules below. A key the user set is never changed,
   and candidates that contradict one (say `model.num_layers: 2`) are left out, as are those
   the machine's memory cannot train and those that would only memorise a small corpus.
   Below the rule's fitted range (MIN_FITTED_CHARS) the fastest candidate is kept instead.

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

from charrnn import devices, memory, speed
from charrnn.batches import check_split
from charrnn.config import Config, DataConfig
from charrnn.errors import CharRNNError, ConfigError, TrainingInterrupted
from charrnn.interrupts import exit_code, signal_name
from charrnn.model import CharRNN, ModelArgs

CALIBRATION_SHARE = 0.05  # of the time budget, at most, spent measuring candidates
MIN_MEASURE_S = 0.05  # each measurement runs at least this long (two steps, whatever it takes)
# ... and at most this long: a longer one reads the speed no better, and 5% of a budget of
# days (or of max_time: 1e12) kept a run measuring for hours before its first step.
MAX_MEASURE_S = 3.0
ALONE_MEASURE_S = 0.5  # ... and this long where it is the only candidate (its speed sets the
# number of steps and of evaluations, not a choice)
WIDTHS = (128, 192, 256, 384, 512, 768, 1024)
DEPTHS = (1, 2)
EVALUATION_SHARE = 0.03  # of the budget left for periodic and final evaluation
EVALUATIONS = 6  # looks at the validation text on the way (each on train.eval_chars)
# ... and one per this many passes over the corpus, up to MAX_EVALUATIONS, where a small corpus
# is read many times: the model then learns it by heart, and best.pt keeps the weights of the
# evaluation that scored best, which six looks found late (a 3 kB text read 780 times: its
# best, at the first look, was long past).
PASSES_PER_EVALUATION, MAX_EVALUATIONS = 10, 60
MANY_PASSES = 100  # above this many passes over the corpus, the plan warns
MIN_EVAL_EVERY = 10  # steps between evaluations, at least
MAX_EVAL_CHARS = 10_000
# Scoring a character (forward pass only) costs about this share of training on it: what
# sizes train.eval_chars, so that the evaluations stay within EVALUATION_SHARE of the budget
# (10,000 characters of a 125,000-character vocabulary took 40 s of a 30 s budget).
SCORING_COST = 0.35
# The smallest number of characters read in the runs the rule was fitted to. Below it the rule
# is out of its range and favours large models it cannot train in so few steps (100 steps of
# 1x512 lost to 1x128 by 0.06): the smallest, fastest candidate is taken instead.
MIN_FITTED_CHARS = 400_000
MIN_USEFUL_STEPS = 100  # below this a budget is said to be too small to learn much
# Parameters per training character, at most: past it a model only memorises a small corpus
# (a 3 kB text read 350 times: best 2.43 nats/char early, 4.17 at the end). The fitted runs
# went to 3.3 per character on tiny-shakespeare.
MAX_PARAMETERS_PER_CHAR = 4

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
PLANNED = ("model.size", "model.cell", "model.embedding_dim", "model.hidden_size",
           "model.num_layers", "model.dropout", "data.batch_size", "data.seq_len", "optim.lr",
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
    batch_chars: int = 1  # characters of one step (batch x window), all processes together
    shape_given: bool = False  # the user set both the width and the depth

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
        epochs = c.chars / max(self.train_chars, 1)
        if c.chars < MIN_FITTED_CHARS:
            why = (f"too few characters for the rule fitted to {MIN_FITTED_CHARS / 1e6:.1f}M "
                   "and more" + ("" if self.shape_given else ", so the fastest candidate"))
        else:
            runners_up = sorted(self.measured, key=lambda m: m.predicted)[1:3]
            others = "".join(f", then {m.name} {m.precision} {m.predicted:.3f}"
                             for m in runners_up)
            why = f"predicted {c.predicted:.3f} nats/char on text like Shakespeare's{others}"
        count = len(self.measured)
        return (f"model.size auto: {cfg.model.cell} {c.name} ({c.parameters:,} parameters, "
                f"{c.precision}) at {c.chars_per_s:,.0f} chars/s reads {_count(c.chars)} "
                f"chars ({epochs:.1f} epochs, {self.steps:,} steps); {why}; "
                f"batch {cfg.data.batch_size}x"
                f"{cfg.data.seq_len}, lr {cfg.optim.lr:.2g}, dropout {cfg.model.dropout:g}, "
                f"weight decay {cfg.optim.weight_decay:g}; {count} candidate"
                f"{'s' if count != 1 else ''} measured in {self.seconds:.1f} s"
                + ("; the shape was not chosen: model.hidden_size and model.num_layers are "
                   "set (keys you set are kept)" if self.shape_given else ""))

    @property
    def steps(self) -> int:
        """The training steps the chosen candidate is predicted to take."""
        return int(self.chosen.chars / self.batch_chars) if self.chosen else 0

    @property
    def warning(self) -> str | None:
        """What the user should hear about the budget, if anything."""
        if self.chosen is None:
            return None
        if self.steps < MIN_USEFUL_STEPS:
            return (f"the budget (train.max_time, train.max_steps) allows only about "
                    f"{self.steps:,} training steps of the fastest model here "
                    f"({self.chosen.name}): too few to learn much; give it more")
        passes = self.chosen.chars / max(self.train_chars, 1)
        if passes > MANY_PASSES:
            return (f"the budget reads the {self.train_chars:,}-character training text about "
                    f"{passes:,.0f} times: even the smallest model learns it by heart, and "
                    "its validation loss rises after a while; best.pt keeps the weights that "
                    "scored best (sample that), and more text or less time trains better")
        return None


def _count(chars: float) -> str:
    return f"{chars / 1e6:.1f}M" if chars >= 1e6 else f"{chars:,.0f}"


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
    given, t = config.given, config.train
    if t.precision == "bf16":  # as training itself would refuse it, before measuring
        devices.check_bf16_trains(device, config.model.cell)
    # Every process trains an equal share of the streams: 18 for 3 processes, not 16.
    batch = config.data.batch_size if "data.batch_size" in given \
        else -(-16 // processes) * processes
    check_split(batch, processes)  # one the user set, before measuring rather than after
    seq_len = config.data.seq_len if "data.seq_len" in given else 64
    speed.prepare(device)  # imports that the trainer too makes before its clock starts
    # Measured as each process will train: its own threads, its share of the streams (the
    # machine's default threads and the whole batch overstated a torchrun run's speed 2-3x).
    with speed.using_threads(t.threads or torch.get_num_threads()):
        return _measure_and_plan(config, vocab_size, train_chars, device, processes, already,
                           stop_signal, batch, seq_len)


def _measure_and_plan(config: Config, vocab_size: int, train_chars: int, device: torch.device,
                processes: int, already: float, stop_signal: Callable[[], int | None],
                batch: int, seq_len: int) -> Plan:
    start = time.perf_counter()
    given, t = config.given, config.train
    share = batch // processes  # the streams each process trains
    if config.model.size != "auto":
        args = ModelArgs(vocab_size=vocab_size, **config.model.shape())
        # Measuring builds and trains the model: one the machine cannot hold is refused
        # first, as training would refuse it (the measurement thrashed the memory instead).
        memory.check_training(args, config.data, train_chars, device)
        precision, speeds = speed.fastest_precision(args, share, seq_len, device)
        measured = [Candidate(1, 0, p, s) for p, s in speeds.items()]
        spent = time.perf_counter() - start
        return Plan(config.replace(train={"precision": precision}), None, measured, spent,
                    precision_only=True)

    base = config.model
    data = dataclasses.replace(config.data, batch_size=batch, seq_len=seq_len)
    shapes = _affordable(config, vocab_size, train_chars, data, device)
    # bf16 is probed at a middling width: quick, and where the choice usually falls.
    probe = ModelArgs(vocab_size=vocab_size, **{**base.shape(), "hidden_size": 256})
    precisions = speed.precisions_to_try(t.precision, probe, share, device)
    allowance = max(CALIBRATION_SHARE * t.max_time - already, 0.0)
    # Seconds of training the prediction assumes: what is left once measuring is done.
    left = max(t.max_time - already - allowance, 0.0) * (1 - EVALUATION_SHARE)
    # A step budget the user set ends training first, bounding what any candidate reads.
    max_chars = t.max_steps * batch * seq_len \
        if t.max_steps and "train.max_steps" in given else math.inf
    measured: list[Candidate] = []
    worse = 0  # candidates in a row predicted worse than the best so far
    step_seconds = 0.0  # one training step of the last shape measured, in one process
    for index, (layers, hidden) in enumerate(shapes):
        remaining = allowance - (time.perf_counter() - start)
        # Shapes come cheapest first: once time is up, or the larger ones keep predicting
        # worse (fewer characters outweigh more parameters), or the last one read fewer
        # characters than the rule knows (the larger ones read no more), the rest would be
        # worse still. One that would take longer than what is left (three steps, at the
        # last one's speed scaled by its work) is not started: a measurement is not cut.
        if measured and (remaining <= 0 or worse >= 2
                         or measured[-1].chars < MIN_FITTED_CHARS
                         or 3 * step_seconds * _work_ratio(shapes[index - 1], (layers, hidden),
                                                           base.embedding_dim, vocab_size)
                         * len(precisions) > remaining):
            break
        per_measure = min(max(remaining / ((len(shapes) - index) * len(precisions)),
                              MIN_MEASURE_S), MAX_MEASURE_S)
        if len(shapes) * len(precisions) == 1:  # nothing to compare: the speed alone
            per_measure = min(per_measure, ALONE_MEASURE_S)
        args = ModelArgs(vocab_size=vocab_size, **{**base.shape(), "num_layers": layers,
                                                   "hidden_size": hidden})
        parameters = CharRNN(args).num_parameters()
        best = min((c.predicted for c in measured), default=math.inf)
        for precision in precisions:
            _check_stop(stop_signal())
            chars_per_s = processes * speed.training_speed(args, share, seq_len, device,
                                                           precision, per_measure)
            measured.append(_predict(Candidate(layers, hidden, precision, chars_per_s,
                                               parameters), left, train_chars, max_chars))
        step_seconds = batch * seq_len * processes / min(c.chars_per_s for c in
                                                         measured[-len(precisions):])
        worse = worse + 1 if min(c.predicted for c in measured[-len(precisions):]) > best else 0
    _check_stop(stop_signal())  # a signal during the last measurement
    spent = time.perf_counter() - start
    left = max(t.max_time - already - spent, 0.0) * (1 - EVALUATION_SHARE)
    measured = [_predict(c, left, train_chars, max_chars) for c in measured]
    chosen = min(measured, key=lambda c: (c.predicted, c.parameters))
    if chosen.chars < MIN_FITTED_CHARS:  # out of the rule's range: the fastest
        chosen = max(measured, key=lambda c: c.chars_per_s)
    one_step = batch * seq_len / chosen.chars_per_s
    if left < one_step:  # said here, where its cause is known
        raise ConfigError([f"'train.max_time' ({t.max_time:g} s) leaves no time to train after "
                           f"measuring the candidate models ({spent:.1f} s): one training step "
                           f"of {chosen.name} at batch {batch}x{seq_len} takes about "
                           f"{one_step:.2g} s here; give more time, or lower data.batch_size "
                           "or data.seq_len"])
    resolved = _apply(config, chosen, batch, seq_len, left, train_chars)
    return Plan(resolved, chosen, measured, spent, train_chars, batch_chars=batch * seq_len,
                shape_given={"model.hidden_size", "model.num_layers"} <= given)


def _flops_per_char(layers: int, hidden: int, embedding: int) -> int:
    """Multiply-adds of the recurrent layers per character: how the cost of a shape grows."""
    return sum(4 * hidden * ((embedding if i == 0 else hidden) + hidden) for i in range(layers))


def _work_ratio(measured: tuple[int, int], next_shape: tuple[int, int], embedding: int,
                vocab_size: int) -> float:
    """How much more a training step of `next_shape` costs than one of `measured`, by their
    multiply-adds per character (the recurrent layers and the output layer)."""
    def work(layers: int, hidden: int) -> int:
        return _flops_per_char(layers, hidden, embedding) + hidden * vocab_size
    return work(*next_shape) / work(*measured)


def _affordable(config: Config, vocab_size: int, train_chars: int, data: DataConfig,
                device: torch.device) -> list[tuple[int, int]]:
    """The candidate shapes, cheapest first, less those that would only memorise the corpus
    (MAX_PARAMETERS_PER_CHAR) and those the machine cannot train (memory.check_training, which
    training would refuse them by); the cheapest is kept from the first rule, and its refusal
    raised if none fits."""
    base = config.model
    shapes = sorted(_shapes(config), key=lambda shape: _flops_per_char(*shape, base.embedding_dim))
    kept, refusal = [], None
    for layers, hidden in shapes:
        args = ModelArgs(vocab_size=vocab_size, **{**base.shape(), "num_layers": layers,
                                                   "hidden_size": hidden})
        if kept and memory.parameter_count(args) > MAX_PARAMETERS_PER_CHAR * train_chars:
            continue
        try:
            memory.check_training(args, data, train_chars, device)
        except CharRNNError as exc:
            refusal = refusal or exc
            continue
        kept.append((layers, hidden))
    if not kept:
        raise refusal
    return kept


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


def _apply(config: Config, chosen: Candidate, batch: int, seq_len: int, seconds: float,
           train_chars: int) -> Config:
    """The config with the plan's values wherever the user did not set the key."""
    steps = max(int(chosen.chars / (batch * seq_len)), 1)
    passes = chosen.chars / max(train_chars, 1)
    evaluations = int(min(max(EVALUATIONS, passes / PASSES_PER_EVALUATION), MAX_EVALUATIONS))
    # Each evaluation's characters: all of them (and the final one) within EVALUATION_SHARE
    # of the time, at the chosen model's speed (no fewer than 500).
    eval_chars = int(EVALUATION_SHARE * seconds * chosen.chars_per_s
                     / (SCORING_COST * (evaluations + 1)))
    planned = {
        # A rerun from the run's config.yaml trains this model rather than measuring again.
        "model.size": "fixed", "model.hidden_size": chosen.hidden,
        "model.num_layers": chosen.layers,
        "model.dropout": 0.1, "data.batch_size": batch, "data.seq_len": seq_len,
        "optim.lr": learning_rate_for(chosen.hidden, chosen.layers),
        "optim.weight_decay": 0.1, "optim.min_lr": 1e-5, "optim.warmup": 0.02,
        "train.max_steps": None, "train.precision": chosen.precision,
        # At least MIN_EVAL_EVERY steps apart: a run faster than measured (a machine less
        # loaded than while measuring) made 127 evaluations of a 7-step prediction.
        "train.eval_every": max(steps // evaluations, MIN_EVAL_EVERY),
        "train.eval_chars": min(max(eval_chars, 500), MAX_EVAL_CHARS),
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
