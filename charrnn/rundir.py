"""A run directory's life cycle: one trainer at a time, what it keeps, and resuming from it.

A run directory holds `last.pt` (weights and the training state below), `best.pt` (the best
weights so far), optional `step-*.pt` (train.keep_last), `config.yaml` (the resolved config),
`metrics.jsonl`, the encoded corpus (idcache.py) and `.lock`. `RunDir.open` locks it, tidies
what a killed run left, and either finds the checkpoint to resume from or makes sure a new run
clobbers nothing unless --overwrite was given. `TrainState` is what `last.pt` holds besides
the weights, so that a resumed run continues exactly where the stopped one was.

When torchrun restarts the workers of a job, it runs the same command line again, --resume or
not, --overwrite or not. last.pt names the torchrun job that wrote it, so the restarted workers
continue from their own job's last.pt and never take an older run's for it, nor overwrite it;
and what the first start of their launch decided is kept (.launch.json), so that a job id
given again does not let a restart take over a run its first start refused or replaced.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import random
import stat
import time
from collections.abc import Collection
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from charrnn import checkpoint, fileio, idcache
from charrnn.config import Config, config_from_dict, read_yaml_mapping
from charrnn.errors import CharRNNError, CheckpointError
from charrnn.metrics import METRICS_FILE, read_metrics

if TYPE_CHECKING:
    from charrnn.distributed import ElasticJob

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; a second run is not detected there
    fcntl = None

CONFIG_FILE = fileio.RUN_CONFIG_FILE
LOCK_FILE = fileio.RUN_LOCK_FILE
LAUNCH_FILE = ".launch.json"  # see _LaunchRecord


@dataclass
class TrainState:
    """What resuming needs besides the weights: last.pt's "train_state"."""

    optimizer: dict  # the optimizer's state_dict (AdamW moments)
    batches: dict  # the batcher's position and its random generator
    hidden: Any  # every stream's hidden state in stream order (a State), or None
    rng: dict  # rank 0's random-number state (torch, python, cuda)
    data_key: dict | None = None  # which encoding of which corpus the position belongs to
    batch_layout: dict | None = None  # batching, batch_size and seq_len it is valid for
    best_step: int | None = None  # the step whose weights best.pt holds
    evaluations: int = 0  # evaluations so far (train.sample_every counts them)
    rng_per_rank: list[dict] | None = None  # under torchrun: every process's own RNG state
    torchrun_job: str | None = None  # the torchrun job (its rendezvous id) that wrote it
    recent_losses: dict | None = None  # the steps' losses since the last log (RecentLosses)

    def to_dict(self) -> dict:
        state = {f.name: getattr(self, f.name) for f in fields(self)}
        if state["rng_per_rank"] is None:
            del state["rng_per_rank"]
        return state

    @classmethod
    def from_dict(cls, state: dict) -> TrainState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in state.items() if k in known})

    def rng_for(self, rank: int, size: int) -> dict | None:
        """Process `rank`'s RNG state: its own, if as many processes wrote the checkpoint;
        otherwise rank 0 takes the saved one and the others keep their own seeds."""
        if self.rng_per_rank and len(self.rng_per_rank) == size:
            return self.rng_per_rank[rank]
        return self.rng if rank == 0 else None


def capture_rng() -> dict:
    """This process's random-number state: torch's, Python's and (if present) CUDA's."""
    version, internal, gauss = random.getstate()
    rng = {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss]}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))


class RunDir:
    """The directory one run writes: its checkpoints, config, metrics and caches."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        # For new checkpoints: set from the corpus read (Dataset.file_mode); None: the umask's.
        self.checkpoint_mode: int | None = None

    def open(self, locks: contextlib.ExitStack, resume: bool, overwrite: bool,
             job: ElasticJob | None = None, reads: Collection[Path] = ()) -> dict | None:
        """Lock the directory and tidy it; the checkpoint payload to resume from, if any.

        The lock is held until `locks` closes. A new run (nothing to resume) is refused where
        a run already is, or where files are that it would replace or delete, unless
        `overwrite`; `reads`: files the run reads, which it keeps (its data.vocab).
        `job`: the torchrun job of this process. Restarted workers resume from the last.pt
        their job wrote, if it wrote one, and do what their launch's first start decided
        (`_LaunchRecord`).
        """
        restarted_job = job.run_id if job is not None and job.restarted else None
        fileio.ensure_dir(self.path)
        locks.enter_context(RunLock(self.path))
        # What a killed process was writing; holding the lock, no one else writes these now.
        fileio.remove_temporaries(self.path, fileio.RUN_OWN_FILES)
        for name in (checkpoint.LAST, checkpoint.BEST):  # now, not at the first save
            kind = fileio.file_kind(self.path / name)
            if kind not in ("file", "missing"):
                raise CharRNNError(f"cannot use {self.path / name}: "
                                   f"{fileio.what_it_is(kind)}, not a checkpoint; move it away, "
                                   "or choose another train.out_dir")
        record = _LaunchRecord(self.path / LAUNCH_FILE, job)
        payload, started_anew = None, False
        if resume:
            payload = self._resume_payload()
        elif restarted_job is not None:
            record.refuse_again()
            payload = self._checkpoint_of(restarted_job)
            if payload is not None and record.started_anew_after(self.path / checkpoint.LAST):
                payload, started_anew = None, True  # an older launch's, under the same id
        if payload is None and not overwrite and not started_anew:
            try:
                self._refuse_to_clobber(anew=not resume and restarted_job is None, reads=reads)
            except CharRNNError as refusal:
                record.write_first_start(refused=str(refusal))
                raise
        record.write_first_start(new=payload is None)
        return payload

    def _resume_payload(self) -> dict | None:
        """last.pt's payload; None where the run has no checkpoint yet (killed early, or new)."""
        path = self.path / checkpoint.LAST
        if not path.is_file():
            if (self.path / checkpoint.BEST).is_file():
                raise CharRNNError(f"cannot resume {self.path}: it has {checkpoint.BEST} but no "
                                   f"{checkpoint.LAST} (the training state); start over with "
                                   f"--overwrite, or fine-tune with train.init_from: "
                                   f"{self.path / checkpoint.BEST}")
            return None
        payload = checkpoint.load(path)
        if "train_state" not in payload:
            raise CharRNNError(f"{path} holds weights but no training state; start a new run "
                               f"with train.init_from: {path}")
        return payload

    def _checkpoint_of(self, job: str) -> dict | None:
        """last.pt, if torchrun job `job` wrote it; None if no run or another run did.

        Another run's last.pt is what this job found when it first started: it refused it or
        overwrote it then (--overwrite), and does the same again now.
        """
        path = self.path / checkpoint.LAST
        if not path.is_file():
            return None
        payload = checkpoint.load(path)
        written_by = (payload.get("train_state") or {}).get("torchrun_job")
        return payload if written_by == job else None

    def _refuse_to_clobber(self, anew: bool, reads: Collection[Path]) -> None:
        """Refuse to start where a run is; `anew` (not a resume, nor torchrun's restart of a
        job that had saved nothing): also where files are that the run would replace or
        delete (a user's own config.yaml, passed as --config, lost its comments)."""
        existing = [name for name in (checkpoint.LAST, checkpoint.BEST)
                    if (self.path / name).exists()]
        if existing:
            raise CharRNNError(f"{self.path} already holds a run ({', '.join(existing)}); "
                               "continue it with --resume, start over with --overwrite, or "
                               "choose another train.out_dir")
        if not anew:
            return
        kept = {os.path.realpath(path) for path in reads}
        # What could not be made again: caches (an encoded corpus, a counted vocabulary with
        # its key) are, so a run that failed on its input may simply be started again.
        precious = [self.path / CONFIG_FILE, self.path / METRICS_FILE,
                    *self.path.glob("step-*.pt")]
        if not (self.path / idcache.VOCAB_META).exists():  # a vocabulary the user put there
            precious.append(self.path / idcache.VOCAB_FILE)
        replaced = sorted(path.name for path in precious
                          if path.exists() and os.path.realpath(path) not in kept)
        if replaced:
            raise CharRNNError(f"{self.path} holds {', '.join(replaced)}, which a new run there "
                               "would replace or delete; choose another train.out_dir, or pass "
                               "--overwrite to replace them (a run stopped before its first "
                               "checkpoint starts again with --resume)")

    def clear_previous(self) -> None:
        """Remove what an overwritten run left; called only once the new run's inputs check out."""
        # Old step checkpoints too: keep_last would otherwise count them as the new run's;
        # and the records of the run overwritten, or of one killed before its first checkpoint.
        paths = [self.path / checkpoint.LAST, self.path / checkpoint.BEST,
                 *self.path.glob("step-*.pt"), self.path / METRICS_FILE]
        for path in paths:  # all checked before any is removed
            kind = fileio.file_kind(path)
            if kind not in ("file", "missing") and not path.is_symlink():
                raise CharRNNError(f"cannot replace {path}: {fileio.what_it_is(kind)}, not a "
                                   "file charrnn wrote; move it away, or choose another "
                                   "train.out_dir")
        for path in paths:
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise CharRNNError(f"cannot remove {path}: {exc.strerror or exc}; check the "
                                   "permissions, or choose another train.out_dir") from None

    def write_config(self, config: Config) -> None:
        """config.yaml: what a later `--resume RUN_DIR` continues with."""
        fileio.write_text(self.path / CONFIG_FILE, config.to_yaml())

    def save(self, last: dict, best: dict | None, step: int, keep_last: int) -> None:
        """Write last.pt, then best.pt (when given), then the step checkpoint keep_last asks for.

        last.pt goes first, so a run can be resumed from its first checkpoint on; should a
        kill fall before best.pt is written too, resuming writes it (`repair_best`).
        """
        checkpoint.save(last, self.path / checkpoint.LAST, self.checkpoint_mode)
        if best is not None:
            checkpoint.save(best, self.path / checkpoint.BEST, self.checkpoint_mode)
        if keep_last:
            weights_only = {k: v for k, v in last.items() if k != "train_state"}
            checkpoint.save(weights_only, self.path / f"step-{step:08d}.pt",
                            self.checkpoint_mode)
            for old in sorted(self.path.glob("step-*.pt"))[:-keep_last]:
                old.unlink(missing_ok=True)

    def repair_best(self, last: dict) -> None:
        """Write best.pt from last.pt if a kill fell between the two writes of one step."""
        path = self.path / checkpoint.BEST
        with contextlib.suppress(CheckpointError):  # missing: the kill came before it
            if checkpoint.load(path)["step"] == last["step"]:
                return
        checkpoint.save({k: v for k, v in last.items() if k != "train_state"}, path,
                        self.checkpoint_mode)

    def truncate_metrics(self, step: int, ends_here: bool = False) -> None:
        """Drop records logged after the checkpoint being resumed: they will be logged again.

        So will the final evaluation at `step`, if the resumed run `ends_here` (its budget is
        spent); a run resumed to train longer keeps it, and those of earlier ends: they are
        its history (dropping them left gaps where a run had been extended before).
        """
        path = self.path / METRICS_FILE
        if not path.is_file():
            return
        keep = [r for r in read_metrics(self.path) if r.get("step", 0) <= step
                and not (r.get("final") and ends_here and r.get("step") == step)]
        fileio.write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


class _LaunchRecord:
    """What the first start of a torchrun launch decided about this run directory, for the
    restarts of its workers: torchrun runs the same command line again, and a restart found
    its job's last.pt by the job's id alone. With an id given again (README's examples, a
    requeued Slurm job) a new launch's restart took over the run its first start had refused,
    or resumed the old run its first start had been told to --overwrite.

    Kept in the run directory, written by rank 0's first start; a restart heeds it only when
    it comes from its own launch (the same torchrun agent: where rank 0 moved to another
    machine it does not, and the job's id alone decides, as before).
    """

    def __init__(self, path: Path, job: ElasticJob | None):
        self.path, self.job = path, job

    def write_first_start(self, *, new: bool = False, refused: str | None = None) -> None:
        if self.job is None or self.job.restarted or self.job.launch is None:
            return
        fileio.write_text(self.path, json.dumps({
            "job": self.job.run_id, "agent": self.job.launch, "refused": refused,
            "new_at": time.time() if new else None}))

    @functools.cached_property
    def _ours(self) -> dict | None:
        """The record, if this launch's first start wrote it (read once)."""
        if self.job is None or self.job.launch is None or not self.path.is_file():
            return None
        try:
            record = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        ours = isinstance(record, dict) and record.get("job") == self.job.run_id \
            and record.get("agent") == self.job.launch
        return record if ours else None

    def refuse_again(self) -> None:
        """Raise what the first start of this launch was refused with, if it was."""
        refused = (self._ours or {}).get("refused")
        if isinstance(refused, str):
            raise CharRNNError(refused)

    def started_anew_after(self, last: Path) -> bool:
        """Whether this launch's first start began a new run after `last` was written."""
        new_at = (self._ours or {}).get("new_at")
        with contextlib.suppress(OSError, TypeError):
            return last.stat().st_mtime < float(new_at)
        return False


def saved_config(run_dir: str | Path) -> Config:
    """The resolved config a run saved, to resume it without naming the original file."""
    path = Path(run_dir).expanduser() / CONFIG_FILE
    if not path.exists():
        raise CharRNNError(f"{run_dir} has no {CONFIG_FILE}; pass --config as well")
    return config_from_dict(read_yaml_mapping(path), str(path))  # damage: one clear error


class RunLock:
    """An exclusive `flock` on run_dir/.lock: one training process per run directory.

    The operating system drops it when the holder dies, however it dies, so a stale lock from
    a killed run is simply taken over.
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        # Never through a symbolic link or into a FIFO planted under the name: the pid
        # written below would truncate whatever file it leads to.
        flags = os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(self.path, flags, 0o644)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise OSError(errno.EINVAL, "not a regular file")
        except OSError as exc:
            what = "a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
            raise CharRNNError(f"cannot create {self.path}: {what}; remove it, or choose a "
                               "writable train.out_dir") from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_pid(fd)
                os.close(fd)
                who = f"process {holder}" if holder else "another process"
                raise CharRNNError(f"{self.path.parent} is in use by {who} (still training); "
                                   "wait for it, stop it, or choose another train.out_dir") \
                    from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as exc:  # a full disk: better now than at the first checkpoint
            os.close(fd)
            raise CharRNNError(fileio.write_problem(self.path, exc)) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 32).decode().strip()
    return ""
