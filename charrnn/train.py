"""Training: stateful truncated-BPTT over contiguous streams, AdamW, evaluation, checkpoints.

`Trainer.run` is the loop: per step a learning rate, one training step, one reading of the
clock and the signals, then logging, evaluation, a timed save and a stop when they are due; at
the end a final evaluation. Each step takes the next window of every stream, carries the
(detached) hidden state over from the previous window, and updates the model. Losses stay on
the device and are read once per log interval, so the loop never waits on the GPU in between.
Evaluations score the validation text and write `last.pt` and, when it improves, `best.pt`;
the run directory (rundir.py) keeps everything needed to resume exactly.

Under torchrun, every process runs a `Trainer` on its own share of the streams (see
distributed.py); rank 0 alone writes the run directory and reports. When torchrun restarts the
workers after a fault, they resume from the last.pt their job wrote (rundir.py).
"""

from __future__ import annotations

import contextlib
import math
import random
import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from charrnn import autosize, checkpoint, devices, fileio, memory, speed
from charrnn.batches import make_batches
from charrnn.config import Config
from charrnn.data import Dataset, check_named_vocab, load_dataset, same_corpus
from charrnn.distributed import ElasticJob, World
from charrnn.errors import (
    CheckpointError,
    ConfigError,
    CorpusError,
    TrainingInterrupted,
    TrainingStopped,
)
from charrnn.evaluate import Score, score_stream
from charrnn.interrupts import StopRequest, exit_code, signal_name
from charrnn.metrics import (
    JsonlLogger,
    MetricsLogger,
    MultiLogger,
    SilentView,
    TensorBoardLogger,
    TrainingView,
    WarningsView,
)
from charrnn.model import CharRNN, ModelArgs, join_streams, map_state
from charrnn.rundir import RunDir, TrainState, capture_rng, restore_rng
from charrnn.schedule import budget_fraction, learning_rate
from charrnn.vocab import Vocab

ARCHITECTURE = ("cell", "embedding_dim", "hidden_size", "num_layers")


@dataclass
class RunResult:
    """What `train` returns: where the run is, how far it went, and its scores (nats/char)."""

    run_dir: Path
    step: int
    elapsed: float  # seconds of training (evaluations during training included)
    final: Score | None  # full validation score of the final weights
    best_val_loss: float | None  # best.pt's score
    best_val_chars: int | None = None  # ... over this many validation characters


def train(config: Config, *, resume: bool | str | Path = False, overwrite: bool = False,
          view: TrainingView | None = None, stop: StopRequest | None = None,
          exit_after_grace: bool = False) -> RunResult:
    """Train as `config` says, or continue the run in `resume` (True: config's out_dir).

    `view` shows progress and messages; without one, progress is not shown and warnings go
    to Python's `warnings` (as CharRNNWarning). `stop` is asked after every step, and once
    after the final evaluation, whether to stop (by default: Ctrl-C, SIGTERM, SIGUSR1 or
    SIGHUP; training saves last.pt and raises TrainingInterrupted, a KeyboardInterrupt).
    With `exit_after_grace` (the command line), or under torchrun, the process also ends
    train.preempt_grace seconds after the signal if still running (a save stuck on a slow
    disk, a peer that hangs); a notebook's kernel is never ended so.
    Under torchrun every process calls this, and rank 0 reports for all of them; when
    torchrun restarts the workers, they resume from the last.pt their job wrote.

    Training seeds torch's and Python's random numbers and sets torch's thread count for
    itself; the caller's are as they were afterwards. They are the process's own: training
    in a thread of its own while other threads draw random numbers shares them (neither
    run's numbers are then its seed's).
    """
    config = config.checked()  # one built in code has had no checks
    if resume not in (False, None, True):
        config = config.replace(train={"out_dir": str(resume)})
    run_dir = RunDir(config.train.out_dir)
    fileio.ensure_dir(run_dir.path)  # on every machine: each encodes its corpus copy there
    with _callers_state_kept(), \
            World.from_environment(config.train.device, config.train.peer_timeout) as world, \
            contextlib.ExitStack() as scope:
        if not world.is_main:
            view = SilentView()  # rank 0 reports for every process
        elif view is None:
            view = WarningsView()
        hard_exit = exit_after_grace or world.job is not None or world.size > 1
        stop = scope.enter_context(stop or _stop_on_signals(config, run_dir, view, hard_exit))
        _check_same_settings(world, config)
        # Rank 0 alone locks, tidies and reads the run directory, and passes on what it read.
        vocab_read = [Path(config.data.vocab).expanduser()] if config.data.vocab else []
        resume_from = world.run_on_main(lambda: run_dir.open(
            scope, bool(resume), overwrite, world.job, reads=vocab_read))
        _report_start(view, run_dir, world.job, resume=bool(resume), found=resume_from)
        # Rank 0 measures what `auto` leaves open, and every process trains as it decided.
        if resume_from is None and config.model.size == "auto":
            view.message("measuring candidate models on this machine for model.size: auto "
                         "(counted in train.max_time)")
        plan = world.run_on_main(lambda: _plan(config, run_dir, resume_from, world, stop))
        if plan.decided:
            view.message(plan.describe())
        if plan.warning:
            view.message(plan.warning, "warning")
        # Rank 0 first: the others then find the corpus already encoded.
        trainer = world.in_turns(lambda: Trainer(plan.config, run_dir, world, view,
                                                 resume_from, spent=plan.seconds))
        # Closed however training ends: TensorBoard's writer kept a thread and a file open
        # after every stopped or diverged run of a notebook.
        scope.callback(trainer.logger.close)
        _check_same_data(world, trainer.data.key)
        return trainer.run(stop)


# Settings each machine may give its own way: where its files are, and its own CPU threads.
PER_MACHINE = {("data", "path"), ("data", "vocab"), ("train", "init_from"),
               ("train", "out_dir"), ("train", "threads")}


def _check_same_settings(world: World, config: Config) -> None:
    """Under torchrun, refuse settings that differ between the processes: rank 0's were
    trained with and the others' silently ignored (a --set on one machine only)."""
    shared = {(section, key): value for section, values in config.to_dict().items()
              for key, value in values.items() if (section, key) not in PER_MACHINE}

    def problem(rank: int, theirs: dict) -> ConfigError | None:
        differ = [f"{section}.{key} ({theirs.get((section, key))!r} against {value!r})"
                  for (section, key), value in shared.items()
                  if theirs.get((section, key)) != value]
        return ConfigError([f"rank {rank} was started with other settings than rank 0: "
                            f"{', '.join(differ)}; start every process with the same config "
                            "and --set options"]) if differ else None

    _refuse_unlike_rank_0(world, shared, problem)


def _check_same_data(world: World, key: dict) -> None:
    """Under torchrun, refuse processes whose corpus or vocabulary differs from rank 0's:
    each machine reads its own copy, and another copy gave the same ids other characters
    (the halves of every batch meant different text) or a model of another width (an error
    from DDP that hid its cause)."""
    _refuse_unlike_rank_0(world, key, lambda rank, theirs: None if theirs == key else CorpusError(
        f"the corpus or vocabulary of rank {rank} differs from rank 0's (another copy of "
        "data.path, or another data.vocab): give every machine the same files"))


def _refuse_unlike_rank_0(world: World, mine: Any,
                          problem: Callable[[int, Any], Exception | None]) -> None:
    """Every process's `mine` goes to rank 0, which raises the first `problem` with one of
    them (raised on every process, as run_on_main does)."""
    every = world.gather(mine)

    def compare() -> None:
        for rank, theirs in enumerate(every):
            if (error := problem(rank, theirs)) is not None:
                raise error

    world.run_on_main(compare)


def _plan(config: Config, run_dir: RunDir, resume_from: dict | None,
          world: World, stop: StopRequest) -> autosize.Plan:
    """`model.size: auto` and `train.precision: auto` made concrete for this machine; a
    resumed run keeps what its checkpoint's run chose."""
    if resume_from is not None:
        return autosize.Plan(autosize.adopt(config, resume_from.get("config") or {}), None)
    if config.model.size != "auto" and config.train.precision != "auto":
        return autosize.Plan(config, None)
    vocab = None
    if config.train.init_from:
        vocab = Vocab.from_dict(checkpoint.load(config.train.init_from)["vocab"])
    data = load_dataset(config.data, run_dir.path, vocab, warn=lambda text: None)
    return autosize.plan(config, data.vocab.size, len(data.train), world.device, world.size,
                         stop_signal=lambda: stop.signum)


@contextlib.contextmanager
def _callers_state_kept() -> Iterator[None]:
    """The caller's random numbers (torch's CPU generator and Python's) and torch's thread
    count, as they were before training, afterwards."""
    threads, python_random = torch.get_num_threads(), random.getstate()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        random.setstate(python_random)
        torch.set_num_threads(threads)


def _stop_on_signals(config: Config, run_dir: RunDir, view: TrainingView,
                     hard_exit: bool) -> StopRequest:
    if not hard_exit:
        return StopRequest()
    grace = config.train.preempt_grace

    def out_of_time(name: str) -> None:
        view.message(f"still running {grace:g} s after {name} (train.preempt_grace): exiting "
                     f"now; {run_dir.path / checkpoint.LAST}, if there, is the last complete "
                     "checkpoint", "warning")

    return StopRequest(grace, on_expiry=out_of_time)


def _report_start(view: TrainingView, run_dir: RunDir, job: ElasticJob | None, *,
                  resume: bool, found: dict | None) -> None:
    """What a new run must know of what it found (a resumed run's line comes with the rest)."""
    if found is None and resume:
        view.message(f"nothing to resume in {run_dir.path} yet (no {checkpoint.LAST}): "
                     "starting a new run")
    elif found is None and job is not None and job.restarted:
        view.message(f"torchrun restarted the workers (restart {job.restarts} of this job) "
                     f"and {run_dir.path} holds no {checkpoint.LAST} of this job: starting the "
                     "run afresh (if rank 0 is now on another machine, its train.out_dir is "
                     "another one: put it on a shared file system)")
    if job is None or not job.max_restarts or job.restarted:
        return
    # What makes restarts less safe, said once, before the first one.
    if not job.has_own_id:
        view.message("torchrun has no --rdzv-id: after a restart, charrnn cannot tell this "
                     "job's last.pt from one another job without an id left in train.out_dir; "
                     "pass --rdzv-id=JOB_ID (e.g. $SLURM_JOB_ID)", "warning")
    if job.shares_torchrun_store:
        view.message("torchrun shares its store with the workers: a restart can fail to "
                     "connect and use up another of --max-restarts (pytorch/pytorch#135712); "
                     "start torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1", "warning")


class Trainer:
    def __init__(self, config: Config, run_dir: RunDir, world: World, view: TrainingView,
                 resume_from: dict | None = None, spent: float = 0.0):
        self.config, self.run_dir, self.world, self.view = config, run_dir, world, view
        t = config.train
        devices.set_threads(t.threads)
        self.device = world.device
        # Each process draws its own dropout masks; rank 0 keeps the single-process seed, and
        # DDP gives every process rank 0's initial weights.
        torch.manual_seed(t.seed + world.rank)
        random.seed(t.seed + world.rank)

        inherited = resume_from or self._init_payload()
        vocab = Vocab.from_dict(inherited["vocab"]) if inherited else None
        if vocab is not None:
            check_named_vocab(config.data, vocab)
        if resume_from is not None:  # before the corpus is read: refusing must cost nothing
            self._check_same_architecture(resume_from)
            started_from = ((resume_from.get("config") or {}).get("train") or {}).get("init_from")
            if t.init_from and t.init_from != started_from:
                view.message(f"train.init_from ({t.init_from}) is not read when resuming: the "
                             "run goes on from its last.pt", "warning")
        self.data: Dataset = load_dataset(config.data, run_dir.path, vocab,
                                          warn=lambda text: view.message(text, "warning"))
        self.vocab = self.data.vocab
        run_dir.checkpoint_mode = self.data.file_mode
        self.model = self._build_model(inherited)
        if inherited is not None and resume_from is None:
            # Fine-tuning keeps the checkpoint's architecture: config.yaml says so (it
            # recorded the config's 1x512 for a 1x128 model).
            self.config = self.config.replace(model={
                key: getattr(self.model.args, key) for key in ARCHITECTURE})
        self.amp = speed.PRECISIONS[self._precision()]
        self.optimizer = self._make_optimizer()
        # The same seed everywhere: every process lays out the same streams, then takes its own.
        self.batches = make_batches(config.data, self.data.train, t.seed, world.part)
        self.state = None  # the hidden state carried from one window of each stream to the next
        self.losses = RecentLosses()
        self.step, self.elapsed = 0, spent  # a new run's budget counts the planning too
        self.best_val_loss: float | None = None
        self.best_val_chars: int | None = None  # how many characters best_val_loss is over
        self.best_step: int | None = None  # the step whose weights best.pt holds
        self.evaluations = 0  # counts evaluations for train.sample_every
        self.last_eval: Score | None = None
        if resume_from is not None:
            self._restore(resume_from)
        elif world.is_main:  # --overwrite: the old run stays until now, when all is set
            run_dir.clear_previous()
        if world.is_main:  # on resume too: the next --resume RUN_DIR starts from this one
            run_dir.write_config(self.config)
        self.logger = self._make_logger()
        # What the training step calls: the model itself, or DDP's wrapper once run() starts.
        self.trainable: torch.nn.Module = self.model

    # ---- the loop -------------------------------------------------------------------------
    def run(self, stop: StopRequest) -> RunResult:
        """Train until the budget is spent or a stop is requested, then evaluate once more."""
        t = self.config.train
        # Wrapping is itself a collective (rank 0's weights go to all): only once all are set up.
        self.trainable = self.world.wrap(self.model)
        self._announce()
        self.clock = Clock(self.elapsed)
        self.speed_from = (self.step, self.elapsed)  # where the current speed window starts
        self.saved_at = (self.step, self.elapsed)  # the last write of last.pt (or the resume)
        if self.step == 0 and self._budget_used() >= 1.0:  # it would save an untrained model
            raise ConfigError([f"'train.max_time' ({t.max_time:g} s) is used up before the "
                               f"first step ({self.elapsed:.1f} s went to measuring this "
                               "machine); give more time"])
        # A view need not be a context manager: one with update and message alone will do.
        entered = self.view if hasattr(self.view, "__enter__") else contextlib.nullcontext()
        with entered:
            while (fraction := self._budget_used()) < 1.0:
                lr = self._set_lr(fraction)
                with self.world.averaging_gradients():
                    self.losses.add(*self.train_step())
                self.step += 1
                signum = self._read_clock_and_signals(stop)
                if self.step % t.log_every == 0:
                    self._log(fraction, lr)
                # The last step of a step budget is scored once, by the final evaluation.
                # (So is the last of a time budget, when the budget ends at a periodic one.)
                if t.eval_every and self.step % t.eval_every == 0 \
                        and self.step != t.max_steps and self._budget_used() < 1.0:
                    self._evaluate(final=False)
                elif self._save_is_due():
                    self._check_finite()
                    self._save(self.last_eval, timed=True)
                if signum:
                    self._stop(signum)
            final = self._evaluate(final=True)
            # A signal during the final evaluation (or a resume with nothing left to train)
            # still stops the caller: its loop of runs must not go on to the next.
            if signum := int(self.world.max([float(stop.signum or 0)])[0]):
                self._stop(signum, complete=True)
        return RunResult(self.run_dir.path, self.step, self.elapsed, final, self.best_val_loss,
                         self.best_val_chars)

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One optimizer step on the next window of every stream: (loss, gradient norm)."""
        x, y, reset = self.batches.next()
        if reset.all():
            self.state = None  # the streams start over: no context to carry
        elif reset.any() and self.state is not None:
            keep = self._to_device(~reset)[None, :, None]  # (1, B, 1)
            self.state = map_state(lambda s: s * keep, self.state)
        x, y = self._to_device(x), self._to_device(y)
        with devices.autocast(self.device, self.amp):
            _, loss, state = self.trainable(x, y, self.state)
        self.state = map_state(torch.Tensor.detach, state)  # truncated BPTT
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = None
        clip = self.config.optim.grad_clip
        if clip:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip, foreach=True)
        self.optimizer.step()
        return loss.detach(), norm

    def _budget_used(self) -> float:
        t = self.config.train
        return budget_fraction(self.step, self.elapsed, t.max_steps, t.max_time)

    def _read_clock_and_signals(self, stop: StopRequest) -> int:
        """The step's one look at the clock and at the stop signals: the signal to stop on, or 0.

        A signal reaches the processes at different steps, and their clocks differ, yet they
        must all stop, save and end at the same step: one collective agrees on both, with the
        slowest clock and any signal deciding.
        """
        elapsed, signum = self.world.max([self.clock.read(), float(stop.signum or 0)])
        self.elapsed = elapsed
        return int(signum)

    def _save_is_due(self) -> bool:
        """Whether train.save_every_time has passed since last.pt was written (the same answer
        on every process: they share the clock reading)."""
        every = self.config.train.save_every_time
        # The end of the budget is near: the final evaluation saves at once.
        return (every is not None and self.elapsed - self.saved_at[1] >= every
                and self._budget_used() < 1.0)

    def _set_lr(self, fraction: float) -> float:
        o = self.config.optim
        lr = learning_rate(fraction, peak=o.lr, minimum=min(o.min_lr, o.lr), warmup=o.warmup,
                           schedule=o.schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _log(self, fraction: float, lr: float) -> None:
        mean = self._mean_loss()
        self.losses.clear()
        steps, since = self.step - self.speed_from[0], self.elapsed - self.speed_from[1]
        chars_per_step = self.batches.batch_size * self.config.data.seq_len
        record = {"kind": "train", "step": self.step, "loss": mean, "bpc": mean / math.log(2),
                  "lr": lr, "chars_per_sec": steps * chars_per_step / max(since, 1e-9),
                  "epoch": self.batches.progress, "elapsed": self.elapsed}
        self.speed_from = (self.step, self.elapsed)
        self.logger.log(record)
        fields = {**record, "device": self.device_text}
        if self.last_eval is not None:
            fields["val_loss"], fields["val_bpc"] = self.last_eval.loss, self.last_eval.bpc
        self.view.update(self.step, fraction, fields)

    def _evaluate(self, final: bool) -> Score:
        """Score the validation text, log it, and checkpoint the weights scored."""
        self._check_finite()  # a diverged run is neither scored nor saved
        t = self.config.train
        score = self._score(t.final_eval_chars if final else t.eval_chars)
        # best.pt compares like with like: when periodic evaluations read fewer characters
        # than the final one, the final weights are judged on that same part too.
        compared = score
        if final and t.eval_every and t.eval_chars != t.final_eval_chars:
            compared = self._score(t.eval_chars)
        improved = self.best_val_loss is None or compared.loss < self.best_val_loss
        if improved:
            self.best_val_loss, self.best_step = compared.loss, self.step
            self.best_val_chars = compared.chars
        self.logger.log({"kind": "eval", "step": self.step, "val_loss": score.loss,
                         "val_bpc": score.bpc, "val_chars": score.chars,
                         "elapsed": self.elapsed, "final": final})
        mark = " (best)" if improved else ""
        self.view.message(f"step {self.step:,}: val {score.line()}{mark}",
                          "result" if final else "info")
        self.last_eval = score
        self._save(score, improved)
        self.evaluations += 1
        every = t.sample_every
        if every and self.evaluations % every == 0 and self.world.is_main:
            self.view.message(self._sample_preview(), "sample")
        # The evaluation's time is not training speed: the next speed window starts now.
        self.speed_from = (self.step, self.clock.read())
        return score

    def _stop(self, signum: int, complete: bool = False) -> None:
        """Raise TrainingInterrupted for `signum`, last.pt saved; `complete`: the signal came
        once the run had ended (in its final evaluation), so there is nothing to continue."""
        last = self.run_dir.path / checkpoint.LAST
        if complete:
            raise TrainingInterrupted(
                f"stopped by {signal_name(signum)} as the run ended at step {self.step:,}: it "
                f"is complete, with {last} saved", exit_code=exit_code(signum))
        if self.saved_at[0] != self.step:  # else an evaluation at this step has just saved
            self._check_finite()
            self._save(self.last_eval)
        raise TrainingInterrupted(
            f"stopped by {signal_name(signum)} at step {self.step:,}; {last} saved. Continue "
            f"with: {self._command()} --resume {shlex.quote(str(self.run_dir.path))}",
            exit_code=exit_code(signum))

    # ---- set-up ---------------------------------------------------------------------------
    def _init_payload(self) -> dict | None:
        source = self.config.train.init_from
        if not source:
            return None
        payload = checkpoint.load(source)
        self.view.message(f"fine-tuning from {checkpoint.resolve(source)} "
                          f"(step {payload['step']:,})")
        return payload

    def _architecture_differences(self, inherited: dict) -> list[str]:
        wanted, stored = self.config.model, inherited["model_args"]
        return [f"'model.{k}' is {getattr(wanted, k)!r} here but {stored[k]!r} in the checkpoint"
                for k in ARCHITECTURE if getattr(wanted, k) != stored[k]]

    def _check_same_architecture(self, resumed: dict) -> None:
        differ = self._architecture_differences(resumed)
        if differ:
            raise ConfigError([*differ[:-1], differ[-1] + " (a resumed run keeps its model)"])

    def _build_model(self, inherited: dict | None) -> CharRNN:
        wanted = self.config.model
        if inherited is None:
            args = ModelArgs(vocab_size=self.vocab.size, **wanted.shape())
            memory.check_training(args, self.config.data, len(self.data.train), self.device)
            return CharRNN(args).to(self.device)
        stored = inherited["model_args"]
        if self._architecture_differences(inherited):  # fine-tuning (a resume was checked)
            self.view.message("fine-tuning keeps the checkpoint's architecture ("
                              + ", ".join(f"{k}={stored[k]}" for k in ARCHITECTURE) + ")",
                              "note")
        args = ModelArgs(**{**stored, "dropout": wanted.dropout})
        memory.check_training(args, self.config.data, len(self.data.train), self.device,
                              inherited=True)
        model, _ = checkpoint.model_from({**inherited, "model_args": args.to_dict()})
        return model.to(self.device)

    def _precision(self) -> str:
        """train.precision, measured here if nothing decided it before (a Trainer made
        directly, or resuming a run saved before precision was measured)."""
        precision = self.config.train.precision
        if precision == "bf16":
            devices.check_bf16_trains(self.device, self.model.args.cell)
        if precision == "auto":
            d = self.config.data
            precision, _ = speed.fastest_precision(self.model.args, d.batch_size, d.seq_len,
                                                   self.device)
            self.config = self.config.replace(train={"precision": precision})
        return precision

    def _make_optimizer(self) -> torch.optim.Optimizer:
        o = self.config.optim
        # Decay matrices only: shrinking biases and norms towards zero does not regularise.
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        other = [p for p in self.model.parameters() if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": o.weight_decay},
                  {"params": other, "weight_decay": 0.0}]
        # The fused kernel is one pass over the weights: 6x faster than the default on CPU.
        fused = self.device.type in ("cuda", "cpu")
        return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), fused=fused)

    def _make_logger(self) -> MetricsLogger:
        if not self.world.is_main:
            return MultiLogger([])
        loggers: list[MetricsLogger] = [JsonlLogger(self.run_dir.path)]
        if self.config.train.tensorboard:
            loggers.append(TensorBoardLogger(self.run_dir.path))
        return MultiLogger(loggers)

    def _announce(self) -> None:
        self.device_text = devices.describe(self.device)
        if self.world.size > 1:
            each = self.batches.batch_size // self.world.size
            self.view.message(f"data parallel: {self.world.describe()}, each training {each} of "
                              f"the {self.batches.batch_size} streams of a step "
                              "(data.batch_size)")
        args = self.model.args
        precision = "bf16 autocast" if self.amp else "fp32"
        self.view.message(f"device: {self.device_text}, {precision} | model: {args.cell} "
                          f"{args.num_layers}x{args.hidden_size}, "
                          f"{self.model.num_parameters():,} parameters | vocabulary: "
                          f"{self.vocab.size:,} | train {len(self.data.train):,} chars, "
                          f"val {len(self.data.val):,} chars")
        o = self.config.optim
        if o.schedule != "constant" and o.min_lr > o.lr:  # a schedule that climbs instead
            self.view.message(f"optim.min_lr ({o.min_lr:g}) is above optim.lr ({o.lr:g}): the "
                              "learning rate rises to it as training goes on; lower "
                              "optim.min_lr", "warning")
        if not self.step:
            return
        where = f"at step {self.step:,} ({self.elapsed:.0f} s trained)"
        job = self.world.job
        if job is not None and job.restarted:
            self.view.message(f"torchrun restarted the workers (restart {job.restarts} of this "
                              f"job): resuming from {self.run_dir.path / checkpoint.LAST} {where}")
        else:
            self.view.message(f"resuming {where}")

    # ---- the step's helpers ---------------------------------------------------------------
    def _to_device(self, batch: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            # From pageable memory a copy waits for the GPU to finish; pinned, it does not.
            batch = batch.pin_memory()
        return batch.to(self.device, non_blocking=True)

    def _mean_loss(self) -> float:
        """The mean loss since the last log (the one device sync per interval), if finite."""
        mean, first_bad = self.losses.mean(self.world)
        if first_bad is not None:
            raise self._diverged("the loss", self.step - len(self.losses) + 1 + first_bad)
        return mean

    def _check_finite(self) -> None:
        """Stop with a clear error if a recent loss or gradient, or a weight, is not finite."""
        self._mean_loss()
        # A step can turn the weights to inf/NaN while its own loss was still finite; such
        # weights must never replace the last good checkpoint.
        finite = torch.stack([torch.isfinite(p).all() for p in self.model.parameters()]).all()
        if not bool(finite):
            raise self._diverged("the weights", self.step)

    def _diverged(self, what: str, step: int) -> TrainingStopped:
        kept = (f"the last good checkpoint in {self.run_dir.path} is kept"
                if (self.run_dir.path / checkpoint.LAST).exists() else "no checkpoint was written")
        return TrainingStopped(
            f"{what} became non-finite (NaN or inf) at step {step:,}; training stopped "
            f"and {kept}. Lower optim.lr (now {self.config.optim.lr:g}) or set "
            "optim.grad_clip, then start again")

    def _score(self, limit: int | None) -> Score:
        """The first `limit` validation characters (all when None), scored on every process."""
        val = self.data.val if limit is None else self.data.val[:limit + 1]
        # Every process scores its share of the segments; all of them get the same total.
        share = score_stream(self.model, val, self.device, part=self.world.part)
        nats, chars = self.world.sum([share.nats, share.chars])
        return Score(nats, int(chars))

    def _sample_preview(self) -> str:
        """A short sample from the current weights, like the classic per-epoch samples."""
        from charrnn.sample import Sampler, SampleSettings

        # Its own seeded generator: sampling must not move the training RNG (exact resume).
        settings = SampleSettings(length=self.config.train.sample_length, temperature=0.8,
                                  seed=self.step)
        # In eval mode (no dropout) for the sample, so that the Sampler needs no copy of it.
        self.model.eval()
        try:
            text = Sampler(self.model, self.vocab, self.device).sample_text(settings)[0]
        finally:
            self.model.train()
        return f"--- sample at step {self.step:,} (temperature 0.8) ---\n{text}"

    def _command(self) -> str:
        return "torchrun ... -m charrnn train" if self.world.size > 1 else "charrnn train"

    # ---- checkpoints and resuming ---------------------------------------------------------
    def _save(self, score: Score | None, improved: bool = False, timed: bool = False) -> None:
        """last.pt (and best.pt when `improved`); callers have checked the run is finite.

        A `timed` save (train.save_every_time) writes last.pt alone: train.keep_last keeps the
        step checkpoints of evaluations, which timed saves would crowd out.
        """
        state = self._train_state()  # every process takes part: each has its own streams
        keep_last = 0 if timed else self.config.train.keep_last
        self.saved_at = (self.step, self.elapsed)

        def write() -> None:
            last = self._payload(score, state)
            best = self._payload(score) if improved else None
            self.run_dir.save(last, best, self.step, keep_last)

        # Rank 0 alone writes; should it fail, every process stops with its error.
        self.world.run_on_main(write)

    def _payload(self, score: Score | None, state: TrainState | None = None) -> dict:
        return checkpoint.build_payload(
            self.model, self.vocab, step=self.step, val_loss=score and score.loss,
            val_chars=score and score.chars, best_val_loss=self.best_val_loss,
            best_val_chars=self.best_val_chars, elapsed=self.elapsed,
            config=self.config.to_dict(), train_state=state and state.to_dict())

    def _train_state(self) -> TrainState | None:
        """What resuming needs besides the weights, on rank 0 (None on the other processes).

        Under torchrun, each process's hidden state and RNG state are gathered on rank 0; the
        hidden states are joined in stream order, as one process training them all holds them.
        """
        hidden = None if self.state is None else map_state(
            lambda s: s.detach().cpu().clone(), self.state)
        recent = self.losses.state(self.world)  # a collective: every process takes part
        every = self.world.gather({"hidden": hidden, "rng": capture_rng()})
        if every is None:
            return None
        if len(every) > 1 and hidden is not None:
            hidden = join_streams([own["hidden"] for own in every])
        return TrainState(
            optimizer=self.optimizer.state_dict(), batches=self.batches.state_dict(),
            hidden=hidden, rng=every[0]["rng"], data_key=self.data.key,
            batch_layout=self._batch_layout(), best_step=self.best_step,
            evaluations=self.evaluations, recent_losses=recent,
            rng_per_rank=[own["rng"] for own in every] if len(every) > 1 else None,
            torchrun_job=self.world.job and self.world.job.run_id)

    def _restore(self, payload: dict) -> None:
        """Continue where last.pt left off. Its weights were checked on loading; what else it
        holds is checked here, since a damaged optimizer state is not just wrong: AdamW's
        fused step wrote past a moment smaller than its weight (a segmentation fault)."""
        try:
            state = TrainState.from_dict(payload["train_state"])
            self.optimizer.load_state_dict(state.optimizer)
            self._check_optimizer_state()
            self._restore_position(payload, state)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError,
                RuntimeError) as exc:
            last = self.run_dir.path / checkpoint.LAST
            raise CheckpointError(
                f"cannot resume from {last}: its training state (besides the weights) is "
                f"damaged or from another run ({_one_line(exc)}); start over with --overwrite, "
                f"or keep its weights in a new run with train.init_from: {last}") from None

    def _check_optimizer_state(self) -> None:
        for weight, state in self.optimizer.state.items():
            for name, value in state.items():
                if not torch.is_tensor(value):
                    raise TypeError(f"the optimizer's {name} is not a tensor")
                if value.dim() > 0 and value.shape != weight.shape:
                    raise ValueError(f"the optimizer's {name} has shape {tuple(value.shape)} "
                                     f"for a weight of {tuple(weight.shape)}")
                if not bool(torch.isfinite(value).all()):
                    raise ValueError(f"the optimizer's {name} is not a number (NaN or inf)")

    def _restore_position(self, payload: dict, state: TrainState) -> None:
        self.step = payload["step"]
        self.elapsed = payload.get("elapsed", 0.0)
        self.best_val_loss = payload.get("best_val_loss")
        self.best_val_chars = payload.get("best_val_chars")
        self.best_step, self.evaluations = state.best_step, state.evaluations
        if state.recent_losses is not None:  # the log interval it stopped in, so far
            self.losses.restore(state.recent_losses, self.device)
        if self.best_step == self.step and self.world.is_main:
            self.run_dir.repair_best(payload)
        changed = self._batching_changes(state.batch_layout or self._batch_layout())
        if not same_corpus(state.data_key, self.data.key):
            self.view.message("the corpus changed since the checkpoint; its data position "
                              "restarts from the beginning, and best.pt (scored on the old "
                              "validation text) is replaced at the next evaluation", "warning")
            # A best loss on other text is no bar to compare with.
            self.best_val_loss = self.best_val_chars = None
        elif changed:
            self.view.message(f"{changed} since the checkpoint; the data position restarts "
                              "from the beginning with a fresh hidden state", "warning")
        else:
            self.batches.load_state_dict(state.batches)
            # (L, B, H): every stream's; this process's rows below.
            self.state = None if state.hidden is None else map_state(
                lambda s: s[:, self.batches.rows].contiguous().to(self.device), state.hidden)
            self._check_hidden_state()
        rng = state.rng_for(self.world.rank, self.world.size)
        if rng is not None:
            restore_rng(rng)
        if self.world.is_main:
            self.run_dir.truncate_metrics(self.step, ends_here=self._budget_used() >= 1.0)

    def _check_hidden_state(self) -> None:
        args = self.model.args
        rows = len(range(self.batches.batch_size)[self.batches.rows])  # this process's
        expected = (args.num_layers, rows, args.hidden_size)
        parts = () if self.state is None else \
            self.state if isinstance(self.state, tuple) else (self.state,)
        if len(parts) not in (0, 2 if args.cell == "lstm" else 1):
            raise ValueError(f"the saved hidden state has {len(parts)} parts")
        for part in parts:
            if tuple(part.shape) != expected or not bool(torch.isfinite(part).all()):
                raise ValueError(f"the saved hidden state has shape {tuple(part.shape)} for "
                                 f"{expected}, or is not a number")

    def _batch_layout(self) -> dict:
        """What a saved data position and hidden state are only valid for."""
        return {"data.batching": self.config.data.batching,
                "data.batch_size": self.batches.batch_size,
                "data.seq_len": self.config.data.seq_len}

    def _batching_changes(self, saved: dict) -> str:
        """'data.batch_size changed (16 -> 32)' and the like; empty when nothing did."""
        now = self._batch_layout()
        return ", ".join(f"{key} changed ({saved.get(key)} -> {value})"
                         for key, value in now.items() if saved.get(key) != value)


def _one_line(exc: BaseException) -> str:
    """An exception's first line, cut short: torch's can run to a page."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    return lines[0] if len(lines[0]) <= 160 else lines[0][:157] + "..."


class Clock:
    """Seconds of training, counting on from what a resumed run had already trained."""

    def __init__(self, already: float = 0.0):
        self.origin = time.perf_counter() - already

    def read(self) -> float:
        return time.perf_counter() - self.origin


class RecentLosses:
    """The losses and gradient norms of the steps since the last log, kept on the device."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.norms: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.losses)

    def add(self, loss: torch.Tensor, norm: torch.Tensor | None) -> None:
        self.losses.append(loss)
        if norm is not None:
            self.norms.append(norm)

    def clear(self) -> None:
        self.losses, self.norms = [], []

    def state(self, world: World) -> dict:
        """For last.pt: a run stopped mid-interval and resumed logs the interval's mean over
        all its steps (it logged the steps after the resume alone). Every process calls it."""
        losses = world.mean(torch.stack(self.losses).float()).cpu() if self.losses else []
        return {"losses": [float(v) for v in losses],
                "norms": [float(v) for v in torch.stack(self.norms).float().cpu()]
                if self.norms else []}

    def restore(self, state: dict, device: torch.device) -> None:
        losses, norms = state["losses"], state["norms"]
        if not all(isinstance(v, float) for v in [*losses, *norms]) \
                or len(norms) not in (0, len(losses)):
            raise ValueError("the saved losses of the log interval are not numbers")
        self.losses = [torch.tensor(v, device=device) for v in losses]
        self.norms = [torch.tensor(v, device=device) for v in norms]

    def mean(self, world: World) -> tuple[float, int | None]:
        """(mean loss over all processes, index of the first non-finite step or None)."""
        if not self.losses:
            return math.nan, None
        # Each process's mean over its equal share: their mean is the whole batch's loss, and
        # a non-finite loss on one process is non-finite on all of them.
        values = world.mean(torch.stack(self.losses).float()).cpu()  # syncs with the device
        grads = (torch.stack(self.norms).float().cpu() if self.norms
                 else torch.zeros(len(values)))
        bad = ~(torch.isfinite(values) & torch.isfinite(grads[-len(values):]))
        first_bad = int(bad.nonzero()[0]) if bad.any() else None
        return float(values.mean()), first_bad
