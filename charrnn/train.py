"""Training: stateful truncated-BPTT over contiguous streams, AdamW, evaluation, checkpoints.

One `Trainer` owns a run directory. Each step takes the next window of every stream, carries
the (detached) hidden state over from the previous window, and updates the model. Losses stay
on the device and are read once per log interval, so the loop never waits on the GPU in
between. Evaluations score the validation text and write `last.pt` and, when it improves,
`best.pt`; `last.pt` also holds everything needed to resume exactly.

Under torchrun, every process runs a `Trainer` on its own share of the streams (see
distributed.py); rank 0 alone writes the run directory and prints.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape

from charrnn import checkpoint, devices, fileio
from charrnn.config import Config, config_from_dict
from charrnn.data import BATCHERS, Dataset, StreamBatches, check_named_vocab, prepare
from charrnn.distributed import World
from charrnn.errors import CharRNNError, CheckpointError, ConfigError, TrainingStopped
from charrnn.evaluate import Score, score_stream
from charrnn.interrupts import StopRequest
from charrnn.metrics import (
    METRICS_FILE,
    JsonlLogger,
    MetricsLogger,
    MultiLogger,
    TensorBoardLogger,
    read_metrics,
)
from charrnn.model import CharRNN, ModelArgs, join_streams, map_state
from charrnn.progress import PlainView, make_view
from charrnn.runlock import RunLock
from charrnn.schedule import budget_fraction, learning_rate
from charrnn.vocab import Vocab

CONFIG_FILE = "config.yaml"
ARCHITECTURE = ("cell", "embedding_dim", "hidden_size", "num_layers")


@dataclass
class RunResult:
    run_dir: Path
    step: int
    elapsed: float  # seconds of training (evaluations during training included)
    final: Score | None  # full validation score of the final weights
    best_val_loss: float | None


def train(config: Config, *, resume: bool | str | Path = False, overwrite: bool = False,
          console: Console | None = None, quiet: bool = False) -> RunResult:
    """Train as `config` says, or continue the run in `resume` (True: config's out_dir).

    Under torchrun every process calls this, and rank 0 speaks for all of them.
    """
    console = console or Console()
    if resume not in (False, None, True):
        config = config.replace(train={"out_dir": str(resume)})
    run_dir = Path(config.train.out_dir)
    fileio.ensure_dir(run_dir)
    with World.from_environment(config.train.device) as world, \
            contextlib.ExitStack() as lock, StopRequest() as stop:
        if not world.is_main:
            console, quiet = Console(quiet=True), True
        # Rank 0 alone locks, tidies and reads the run directory, and passes on what it read.
        resume_from = world.from_main(
            lambda: _open_run(run_dir, lock, resume, overwrite, console, quiet))
        # Rank 0 first: the others then find the corpus already encoded.
        trainer = world.in_turns(lambda: Trainer(config, run_dir, console, quiet=quiet,
                                                 resume_from=resume_from, world=world))
        return trainer.run(stop)


def _open_run(run_dir: Path, lock: contextlib.ExitStack, resume: bool | str | Path,
              overwrite: bool, console: Console, quiet: bool) -> dict | None:
    """Lock the run directory and tidy it; the payload to resume from, if any."""
    lock.enter_context(RunLock(run_dir))
    # What a killed process was writing; holding the lock, no one else writes these now.
    fileio.remove_temporaries(run_dir, ("*.pt", METRICS_FILE, CONFIG_FILE))
    resume_from = _resume_payload(run_dir) if resume else None
    if resume_from is None:
        if resume and not quiet:
            console.print(f"nothing to resume in {run_dir} yet (no {checkpoint.LAST}): "
                          "starting a new run", highlight=False, soft_wrap=True)
        _refuse_to_clobber(run_dir, overwrite)
    return resume_from


def _resume_payload(run_dir: Path) -> dict | None:
    """last.pt's payload; None where the run has no checkpoint yet (killed early, or new)."""
    path = run_dir / checkpoint.LAST
    if not path.is_file():
        if (run_dir / checkpoint.BEST).is_file():
            raise CharRNNError(f"cannot resume {run_dir}: it has {checkpoint.BEST} but no "
                               f"{checkpoint.LAST} (the training state); start over with "
                               f"--overwrite, or fine-tune with train.init_from: "
                               f"{run_dir / checkpoint.BEST}")
        return None
    payload = checkpoint.load(path)
    if "train_state" not in payload:
        raise CharRNNError(f"{path} holds weights but no training state; start a new run with "
                           f"train.init_from: {path}")
    return payload


def _refuse_to_clobber(run_dir: Path, overwrite: bool) -> None:
    existing = [name for name in (checkpoint.LAST, checkpoint.BEST) if (run_dir / name).exists()]
    if existing and not overwrite:
        raise CharRNNError(f"{run_dir} already holds a run ({', '.join(existing)}); continue it "
                           "with --resume, start over with --overwrite, or choose another "
                           "train.out_dir")


def _clear_previous_run(run_dir: Path) -> None:
    """Remove what an overwritten run left; called only once the new run's inputs check out."""
    # Old step checkpoints too: keep_last would otherwise count them as the new run's.
    for path in (run_dir / checkpoint.LAST, run_dir / checkpoint.BEST,
                 *run_dir.glob("step-*.pt")):
        path.unlink(missing_ok=True)
    # The records of the run overwritten, or of one killed before its first checkpoint.
    (run_dir / METRICS_FILE).unlink(missing_ok=True)


class Trainer:
    def __init__(self, config: Config, run_dir: Path, console: Console, *, quiet: bool = False,
                 resume_from: dict | None = None, world: World | None = None):
        self.config, self.run_dir, self.console, self.quiet = config, run_dir, console, quiet
        self.world = world or World()  # one process, unless torchrun started several
        t = config.train
        devices.set_threads(t.threads)
        self.device = self.world.device or devices.pick_device(t.device)
        self.amp = devices.pick_precision(t.precision, self.device)
        # Each process draws its own dropout masks; rank 0 keeps the single-process seed, and
        # DDP gives every process rank 0's initial weights.
        torch.manual_seed(t.seed + self.world.rank)
        random.seed(t.seed + self.world.rank)

        inherited = resume_from or self._init_payload()
        vocab = Vocab.from_dict(inherited["vocab"]) if inherited else None
        if vocab is not None:
            check_named_vocab(config.data, vocab)
        self.data: Dataset = prepare(config.data, run_dir, vocab, say=self.say)
        self.vocab = self.data.vocab
        self.model = self._build_model(inherited, resumed=resume_from is not None)
        self.optimizer = self._make_optimizer()
        batcher = BATCHERS[config.data.batching]
        # The same seed everywhere: every process lays out the same streams, then takes its own.
        options = {"reset_every": config.data.reset_every} if batcher is StreamBatches else {}
        self.batches = batcher(self.data.train, config.data.batch_size, config.data.seq_len,
                               seed=t.seed, part=self.world.part, **options)
        self.state = None  # the hidden state carried from one window of each stream to the next
        self.step, self.elapsed, self.best_val_loss = 0, 0.0, None
        self.best_val_chars: int | None = None  # how many characters best_val_loss is over
        self.evaluations = 0  # counts evaluations for train.sample_every
        self.best_step: int | None = None  # the step whose weights best.pt holds
        if resume_from is not None:
            self._restore(resume_from)
        elif self.world.is_main:  # --overwrite: the old run stays until now, when all is set
            _clear_previous_run(run_dir)
        if self.world.is_main:  # on resume too: the next --resume RUN_DIR starts from this one
            fileio.write_text(run_dir / CONFIG_FILE, config.to_yaml())
        self.logger = self._make_logger()
        # What the training step calls: the model itself, or DDP's wrapper once run() starts.
        self.trainable: torch.nn.Module = self.model

    # ---- set-up ---------------------------------------------------------------------------
    def say(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, highlight=False, soft_wrap=True)

    def _init_payload(self) -> dict | None:
        source = self.config.train.init_from
        if not source:
            return None
        payload = checkpoint.load(source)
        self.say(f"fine-tuning from {checkpoint.resolve(source)} (step {payload['step']:,})")
        return payload

    def _build_model(self, inherited: dict | None, resumed: bool) -> CharRNN:
        wanted = self.config.model
        if inherited is None:
            model = CharRNN(ModelArgs(vocab_size=self.vocab.size, **wanted.__dict__))
            return model.to(self.device)
        stored = inherited["model_args"]
        differ = [f"'model.{k}' is {getattr(wanted, k)!r} here but {stored[k]!r} in the checkpoint"
                  for k in ARCHITECTURE if getattr(wanted, k) != stored[k]]
        if differ and resumed:
            raise ConfigError([*differ[:-1], differ[-1] + " (a resumed run keeps its model)"])
        if differ:
            self.say("[yellow]note:[/] fine-tuning keeps the checkpoint's architecture ("
                     + ", ".join(f"{k}={stored[k]}" for k in ARCHITECTURE) + ")")
        args = ModelArgs(**{**stored, "dropout": wanted.dropout})
        model, _ = checkpoint.model_from({**inherited, "model_args": args.to_dict()})
        return model.to(self.device)

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
        loggers: list[MetricsLogger] = [JsonlLogger(self.run_dir)]
        if self.config.train.tensorboard:
            loggers.append(TensorBoardLogger(self.run_dir))
        return MultiLogger(loggers)

    # ---- the loop -------------------------------------------------------------------------
    def run(self, stop: StopRequest) -> RunResult:
        t, d = self.config.train, self.config.data
        precision = "bf16 autocast" if self.amp else "fp32"
        # Wrapping is itself a collective (rank 0's weights go to all): only once all are set up.
        self.trainable = self.world.wrap(self.model)
        if self.world.size > 1:
            each = self.batches.batch_size // self.world.size
            self.say(f"data parallel: {self.world.describe()}, each training {each} of the "
                     f"{self.batches.batch_size} streams of a step (data.batch_size)")
        self.say(f"device: {devices.describe(self.device)}, {precision} | model: "
                 f"{self.model.args.cell} {self.model.args.num_layers}x"
                 f"{self.model.args.hidden_size}, {self.model.num_parameters():,} parameters | "
                 f"vocabulary: {self.vocab.size:,} | train {len(self.data.train):,} chars, "
                 f"val {len(self.data.val):,} chars")
        if self.step:
            self.say(f"resuming at step {self.step:,} ({self.elapsed:.0f} s trained)")
        chars_per_step = self.batches.batch_size * d.seq_len
        pending: list[torch.Tensor] = []  # per-step losses since the last log, on the device
        norms: list[torch.Tensor] = []
        started = time.perf_counter() - self.elapsed
        window_start, window_steps = time.perf_counter(), 0
        last_eval: Score | None = None
        view = make_view(self.console, devices.describe(self.device), self.quiet)
        with view:
            while True:
                self.elapsed = time.perf_counter() - started
                if t.max_time:
                    # All processes must end at the same step: the slowest clock decides.
                    self.elapsed = self.world.max(self.elapsed)
                fraction = budget_fraction(self.step, self.elapsed, t.max_steps, t.max_time)
                if fraction >= 1.0:
                    break
                lr = self._set_lr(fraction)
                loss, norm = self._train_step()
                self.step += 1
                window_steps += 1
                pending.append(loss)
                if norm is not None:
                    norms.append(norm)
                if self.step % t.log_every == 0:
                    now = time.perf_counter()
                    speed = window_steps * chars_per_step / max(now - window_start, 1e-9)
                    mean = self._check_finite(pending, norms)
                    pending, norms = [], []
                    window_start, window_steps = now, 0
                    record = {"kind": "train", "step": self.step, "loss": mean,
                              "bpc": mean / math.log(2), "lr": lr, "chars_per_sec": speed,
                              "epoch": self.batches.progress,
                              "elapsed": time.perf_counter() - started}
                    self.logger.log(record)
                    view.update(self.step, fraction, self._fields(record, last_eval))
                # The last step of a step budget is scored once, by the final evaluation.
                due = t.eval_every and self.step % t.eval_every == 0
                if due and self.step != t.max_steps:
                    self._check_finite(pending, norms)
                    self.elapsed = time.perf_counter() - started  # this step's time included
                    last_eval = self._evaluate(view, final=False)
                    window_start, window_steps = time.perf_counter(), 0
                # A signal reaches the processes at different steps: they stop at the same one.
                if self.world.any(stop.requested):
                    self._check_finite(pending, norms)
                    self.elapsed = time.perf_counter() - started
                    self._save(last_eval)
                    raise TrainingStopped(
                        f"stopped by {stop.name or 'a signal to another process'} at step "
                        f"{self.step:,}; {self.run_dir / 'last.pt'} saved. Continue with: "
                        f"{self._command()} --resume {self.run_dir}", exit_code=stop.exit_code)
            self._check_finite(pending, norms)
            self.elapsed = time.perf_counter() - started
            final = self._evaluate(view, final=True)
        self.logger.close()
        return RunResult(self.run_dir, self.step, self.elapsed, final, self.best_val_loss)

    def _set_lr(self, fraction: float) -> float:
        o = self.config.optim
        lr = learning_rate(fraction, peak=o.lr, minimum=min(o.min_lr, o.lr), warmup=o.warmup,
                           schedule=o.schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _train_step(self) -> tuple[torch.Tensor, torch.Tensor | None]:
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

    def _to_device(self, batch: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            # From pageable memory a copy waits for the GPU to finish; pinned, it does not.
            batch = batch.pin_memory()
        return batch.to(self.device, non_blocking=True)

    def _check_finite(self, losses: list[torch.Tensor], norms: list[torch.Tensor]) -> float:
        """Mean of the losses; stop with a clear error if any loss or gradient is not finite."""
        if not losses:
            return math.nan
        # Each process's mean over its equal share: their mean is the whole batch's loss, and
        # a non-finite loss on one process is non-finite on all of them.
        values = self.world.mean(torch.stack(losses).float()).cpu()  # the one sync per interval
        grads = torch.stack(norms).float().cpu() if norms else torch.zeros(len(values))
        bad = ~(torch.isfinite(values) & torch.isfinite(grads[-len(values):]))
        if bad.any():
            first = self.step - len(values) + 1 + int(bad.nonzero()[0])
            raise self._diverged("the loss", first)
        return float(values.mean())

    def _check_weights_finite(self) -> None:
        # A step can turn the weights to inf/NaN while its own loss was still finite; such
        # weights must never replace the last good checkpoint.
        finite = torch.stack([torch.isfinite(p).all() for p in self.model.parameters()]).all()
        if not bool(finite):
            raise self._diverged("the weights", self.step)

    def _diverged(self, what: str, step: int) -> TrainingStopped:
        kept = (f"the last good checkpoint in {self.run_dir} is kept"
                if (self.run_dir / checkpoint.LAST).exists() else "no checkpoint was written")
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

    def _evaluate(self, view: PlainView, final: bool) -> Score:
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
        view.message(f"step {self.step:,}: val {score.line()}{mark}", important=final)
        self._save(score, improved)
        self.evaluations += 1
        every = self.config.train.sample_every
        if every and self.evaluations % every == 0 and self.world.is_main:
            view.message(self._sample_preview())
        return score

    def _sample_preview(self) -> str:
        """A short sample from the current weights, like the classic per-epoch samples."""
        from charrnn.sample import Sampler, SampleSettings

        # Its own seeded generator: sampling must not move the training RNG (exact resume).
        settings = SampleSettings(length=self.config.train.sample_length, temperature=0.8,
                                  seed=self.step)
        try:
            text = Sampler(self.model, self.vocab, self.device).sample_text(settings)[0]
        finally:
            self.model.train()  # the sampler switches to eval mode (no dropout)
        return f"[dim]--- sample at step {self.step:,} (temperature 0.8) ---[/]\n" + escape(text)

    # ---- checkpoints ----------------------------------------------------------------------
    def _payload(self, score: Score | None, train_state: dict | None = None) -> dict:
        return checkpoint.build_payload(
            self.model, self.vocab, step=self.step, val_loss=score and score.loss,
            val_chars=score and score.chars, best_val_loss=self.best_val_loss,
            best_val_chars=self.best_val_chars, elapsed=self.elapsed,
            config=self.config.to_dict(), train_state=train_state)

    def _save(self, score: Score | None, improved: bool = False) -> None:
        self._check_weights_finite()
        train_state = self._train_state()  # every process takes part: each has its own streams
        # Rank 0 alone writes; should it fail, every process stops with its error.
        self.world.from_main(lambda: self._write_checkpoints(score, improved, train_state))

    def _write_checkpoints(self, score: Score | None, improved: bool,
                           train_state: dict) -> None:
        # last.pt first, so a run can be resumed from its first checkpoint on; if a kill falls
        # before best.pt is written too, resuming writes it (_repair_best).
        checkpoint.save(self._payload(score, train_state), self.run_dir / checkpoint.LAST)
        if improved:
            checkpoint.save(self._payload(score), self.run_dir / checkpoint.BEST)
        keep = self.config.train.keep_last
        if keep:
            checkpoint.save(self._payload(score), self.run_dir / f"step-{self.step:08d}.pt")
            for old in sorted(self.run_dir.glob("step-*.pt"))[:-keep]:
                old.unlink(missing_ok=True)

    def _train_state(self) -> dict | None:
        """What resuming needs besides the weights, on rank 0 (None on the other processes).

        Under torchrun, each process's hidden state and RNG state are gathered on rank 0; the
        hidden states are joined in stream order, as one process training them all holds them.
        """
        hidden = None if self.state is None else map_state(
            lambda s: s.detach().cpu().clone(), self.state)
        every = self.world.gather({"hidden": hidden, "rng": self._rng_state()})
        if every is None:
            return None
        if len(every) > 1 and hidden is not None:
            hidden = join_streams([own["hidden"] for own in every])
        state = {"optimizer": self.optimizer.state_dict(), "batches": self.batches.state_dict(),
                 "hidden": hidden, "rng": every[0]["rng"], "data_key": self.data.key,
                 "batch_layout": self._batch_layout(),
                 "best_step": self.best_step, "evaluations": self.evaluations}
        if len(every) > 1:
            state["rng_per_rank"] = [own["rng"] for own in every]
        return state

    @staticmethod
    def _rng_state() -> dict:
        rng = {"torch": torch.get_rng_state(), "python": _python_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return rng

    def _own_rng_state(self, state: dict) -> dict | None:
        """This process's RNG state in a checkpoint: rank r's, if as many processes wrote it."""
        per_rank = state.get("rng_per_rank")
        if per_rank and len(per_rank) == self.world.size:
            return per_rank[self.world.rank]
        return state["rng"] if self.world.is_main else None  # the others keep their own seeds

    def _restore(self, payload: dict) -> None:
        state = payload["train_state"]
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as exc:
            raise CharRNNError(f"cannot resume: the optimizer state does not fit ({exc}); "
                               "start a new run with train.init_from instead") from None
        self.step = payload["step"]
        self.elapsed = payload.get("elapsed", 0.0)
        self.best_val_loss = payload.get("best_val_loss")
        self.best_val_chars = payload.get("best_val_chars")
        self.best_step = state.get("best_step")
        self.evaluations = state.get("evaluations", 0)
        if self.best_step == self.step and self.world.is_main:
            self._repair_best(payload)
        changed = self._batching_changes(state.get("batch_layout", self._batch_layout()))
        if state.get("data_key") != self.data.key:
            self.say("[yellow]warning:[/] the corpus changed since the checkpoint; its data "
                     "position restarts from the beginning")
        elif changed:
            self.say(f"[yellow]warning:[/] {changed} since the checkpoint; the data position "
                     "restarts from the beginning with a fresh hidden state")
        else:
            self.batches.load_state_dict(state["batches"])
            hidden = state.get("hidden")  # (L, B, H): every stream's, this process's rows below
            self.state = None if hidden is None else map_state(
                lambda s: s[:, self.batches.rows].contiguous().to(self.device), hidden)
        rng = self._own_rng_state(state)
        if rng is not None:
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            random.setstate(_to_python_rng(rng["python"]))
        if self.world.is_main:
            _truncate_metrics(self.run_dir, self.step)

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

    def _repair_best(self, payload: dict) -> None:
        """Write best.pt from last.pt if a kill fell between the two writes of one step."""
        path = self.run_dir / checkpoint.BEST
        with contextlib.suppress(CheckpointError):  # missing: the kill came before it
            if checkpoint.load(path)["step"] == self.step:
                return
        checkpoint.save({k: v for k, v in payload.items() if k != "train_state"}, path)

    def _command(self) -> str:
        return "torchrun ... -m charrnn train" if self.world.size > 1 else "charrnn train"

    @staticmethod
    def _fields(record: dict, last_eval: Score | None) -> dict:
        fields = dict(record)
        if last_eval is not None:
            fields["val_loss"], fields["val_bpc"] = last_eval.loss, last_eval.bpc
        return fields


def _python_rng_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _to_python_rng(state: list) -> tuple:
    version, internal, gauss = state
    return version, tuple(internal), gauss


def _truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop records logged after the checkpoint being resumed: they will be logged again."""
    import json

    path = run_dir / METRICS_FILE
    if not path.is_file():
        return
    # A final evaluation is logged again when the resumed run ends.
    keep = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step and not r.get("final")]
    fileio.write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


def saved_config(run_dir: str | Path) -> Config:
    """The resolved config a run saved, to resume it without naming the original file."""
    import yaml

    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise CharRNNError(f"{run_dir} has no {CONFIG_FILE}; pass --config as well")
    return config_from_dict(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, str(path))


