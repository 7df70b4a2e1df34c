"""Data-parallel training under torchrun: one process per device, gradients averaged by DDP.

`torchrun --nproc_per_node=N -m charrnn train ...` starts N copies of the same command with
RANK, WORLD_SIZE and LOCAL_RANK set. `World.from_environment` joins them into one process
group (gloo for CPU tensors, plus NCCL for CUDA tensors with each process on cuda:LOCAL_RANK).
A plain `charrnn train` gets a world of one process, whose methods hand values straight back,
so single-process training runs exactly the code it always did. Either way, the world holds
the device its process trains on (chosen by devices.training_device).

Processes must never disagree about what comes next, or one of them waits forever in a
collective the others skipped. So every decision that could differ between them (stop on a
signal, the time budget, a non-finite loss, a failure) is reduced across all processes before
it is acted on, and a `CharRNNError` on one process is raised on every process: rank 0 prints
it, the others stop quietly. Any other failure ends its own process at once, with its
traceback; the others find their peer gone at their next collective and stop too.

torchrun's elastic agent outlives the workers: when one fails (or a node joins or leaves) it
stops them all and starts them again, up to --max-restarts times, as one `ElasticJob`.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from charrnn import devices
from charrnn.errors import REPORTED, CharRNNError, ProcessFailed, TrainingInterrupted, UsageError

T = TypeVar("T")
Reported = CharRNNError | TrainingInterrupted


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass(frozen=True)
class ElasticJob:
    """The torchrun job a process runs in: the same across torchrun's restarts of its workers."""

    run_id: str  # the rendezvous id: --rdzv-id, or a new one for every --standalone launch
    restarts: int  # how many times torchrun has restarted the workers so far
    max_restarts: int  # --max-restarts
    # The workers' store is torchrun's own, kept across restarts (PyTorch's default since 2.5):
    # restarted workers can then read their predecessors' addresses and fail to connect
    # (pytorch/pytorch#135712). TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 for torchrun avoids it.
    shares_torchrun_store: bool = False
    # The torchrun agent that started this process, as [host, pid, start time]: the same for
    # every restart of its workers on this machine, another for every launch (a --rdzv-id
    # given again, a requeued Slurm job keeping its id); None where it cannot be read.
    launch: list | None = None

    @classmethod
    def from_environment(cls) -> ElasticJob | None:
        """The job torchrun started this process in; None without torchrun."""
        run_id = os.environ.get("TORCHELASTIC_RUN_ID")
        if run_id is None:
            return None
        return cls(run_id, int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
                   int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")),
                   os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True",
                   agent_identity())

    @property
    def restarted(self) -> bool:
        return self.restarts > 0

    @property
    def has_own_id(self) -> bool:
        """False for torchrun's default --rdzv-id ("none"), which every job without one shares."""
        return self.run_id != "none"


def agent_identity() -> list | None:
    """[host, pid, start time] of this process's parent (torchrun's agent), from Linux's
    /proc; None elsewhere."""
    parent = os.getppid()
    try:
        with open(f"/proc/{parent}/stat", "rb") as f:
            after_name = f.read().rsplit(b")", 1)[1].split()
        started = int(after_name[19])  # the 22nd field: its start, in clock ticks after boot
    except (OSError, IndexError, ValueError):
        return None
    return [socket.gethostname(), parent, started]


PEER_LOST = ("another process of this run failed (its error is printed above, or in torchrun's "
             "report); this one stopped too")
# How long the other processes of a failed run wait for rank 0 to report the error and exit.
REPORT_GRACE = datetime.timedelta(seconds=60)


class World:
    """The processes training one model: their number, this one's rank, its device."""

    def __init__(self, rank: int = 0, size: int = 1, local_rank: int = 0,
                 device: torch.device | None = None):
        self.rank, self.size, self.local_rank = rank, size, local_rank
        self.device = device or torch.device("cpu")  # where this process trains
        self.backend = ""  # what carries the gradients: gloo or nccl
        self.broken = False  # a collective failed: another process is gone
        # The collectives of training steps (gradients, the clock, scores, checkpoint state)
        # and how long each may wait for a peer: None is the default group and gloo's 30 min.
        self.step_group: dist.ProcessGroup | None = None
        self.peer_timeout: float | None = None
        self.job: ElasticJob | None = None  # the torchrun job, when torchrun started it

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the run directory and prints."""
        return self.rank == 0

    @property
    def part(self) -> tuple[int, int]:
        """(this process's share, number of shares) of the streams and of the evaluation."""
        return self.rank, self.size

    def describe(self) -> str:
        return f"{self.size} processes ({self.backend})"

    # ---- joining and leaving ------------------------------------------------------------------
    @classmethod
    def from_environment(cls, device_name: str, peer_timeout: float | None = None) -> World:
        """The world torchrun started this process in; a world of one without torchrun.

        `peer_timeout` (seconds) bounds every wait for a peer in the collectives of training
        steps: past it, a peer is taken for hung and this process stops.
        """
        job = ElasticJob.from_environment()  # also for torchrun's world of one process
        if not launched_by_torchrun():
            world = cls(device=devices.training_device(device_name))
            world.job = job
            return world
        if not dist.is_available():
            raise UsageError("this PyTorch build has no torch.distributed, which torchrun "
                             "training needs; run `charrnn train` without torchrun")
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        # CPU tensors (flags, scores, objects, CPU training) go over gloo; CUDA tensors over
        # NCCL, GPU to GPU, which starts only if they are used.
        dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
        world = cls(rank, size, local_rank)
        world.job = job
        try:
            # Joined first, so that a device one machine lacks is reported like any error.
            world.device = world.run_on_all(
                lambda: devices.training_device(device_name, local_rank))
        except BaseException as exc:
            world.__exit__(type(exc), exc, exc.__traceback__)
            raise
        world.backend = "nccl" if world.device.type == "cuda" else "gloo"
        if peer_timeout is not None:
            # A group of its own: a bound fit for one step would cut short the waits of the
            # start, where rank 0 alone may encode a corpus for minutes (in_turns).
            world.step_group = dist.new_group(timeout=datetime.timedelta(seconds=peer_timeout))
            world.peer_timeout = peer_timeout
        return world

    def close(self, error: BaseException | None = None) -> None:
        """Leave the process group, after a normal end or after `error`.

        After a failure, torchrun stops every process as soon as one of them exits. When rank
        0 is to print the error that stopped them all, it must be the first to go.
        """
        if self.size == 1 or not dist.is_initialized():
            return
        if error is not None and not self._agreed(error):
            # A failure of this process alone (a bug, a lost peer, a second Ctrl-C): the others
            # may be inside a collective this one will never join, so waiting for them in a
            # barrier would hang both. Leave now: they find this one gone and stop too.
            _leave()
            return
        if error is not None and self.is_main:
            atexit.register(_leave)  # when the interpreter exits, after the error is printed
            return
        if error is not None:
            # Rank 0 leaving closes its connections, which ends this wait with an error.
            with contextlib.suppress(RuntimeError):
                dist.irecv(torch.zeros(1), src=0).wait(REPORT_GRACE)
        else:
            # Leave together: a process tearing gloo down while a peer still talks to it can
            # abort ("terminate called without an active exception") after a finished run.
            with contextlib.suppress(RuntimeError):
                dist.barrier()
        _leave()

    def _agreed(self, error: BaseException) -> bool:
        """Whether every process raised `error` too (run_on_main, run_on_all, in_turns, and
        a stop signal, which every process stops on at the same step)."""
        return isinstance(error, REPORTED) and not self.broken

    def __enter__(self) -> World:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        self.close(exc)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model as the training step calls it: under DDP, which averages the gradients."""
        if self.size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        with self._collective(bounded=True):  # DDP copies rank 0's weights to every process
            return DistributedDataParallel(model, device_ids=ids, process_group=self.step_group)

    # ---- agreeing on values -------------------------------------------------------------------
    def max(self, values: list[float]) -> list[float]:
        """The element-wise maximum over processes."""
        return self._reduce(values, dist.ReduceOp.MAX) if self.size > 1 else values

    def sum(self, values: list[float]) -> list[float]:
        return self._reduce(values, dist.ReduceOp.SUM) if self.size > 1 else values

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise mean over processes, on the tensor's own device (NCCL on CUDA)."""
        if self.size == 1:
            return tensor
        total = tensor.clone()
        with self._collective(bounded=True):
            dist.all_reduce(total, op=dist.ReduceOp.SUM, group=self.step_group)  # gloo: no AVG
        return total / self.size

    def gather(self, value: T) -> list[T] | None:
        """Every process's `value` in rank order on rank 0; None on the others."""
        if self.size == 1:
            return [value]
        every = [None] * self.size if self.is_main else None
        with self._collective(bounded=True):
            dist.gather_object(value, every, dst=0, group=self.step_group)
        return every

    def _reduce(self, values: list[float], op) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64)  # on the CPU: gloo, no device sync
        with self._collective(bounded=True):
            dist.all_reduce(tensor, op=op, group=self.step_group)
        return tensor.tolist()

    # ---- agreeing on failures ------------------------------------------------------------------
    def run_on_main(self, work: Callable[[], T]) -> T:
        """Rank 0 does `work` (writing files, say); every process gets its result or its error."""
        if self.size == 1:
            return work()
        result, error = _attempt(work) if self.is_main else (None, None)
        box = [(result, _describe(error))]
        with self._collective():
            dist.broadcast_object_list(box, src=0)
        result, failure = box[0]
        if failure is not None:
            raise error if self.is_main else ProcessFailed(*failure)
        return result

    def run_on_all(self, work: Callable[[], T]) -> T:
        """`work` on every process; if it fails on one, the first failure is raised on all."""
        if self.size == 1:
            return work()
        result, error = _attempt(work)
        self._settle(error)
        return result

    def in_turns(self, work: Callable[[], T]) -> T:
        """`work` on rank 0 first, then on the first process of every other machine, then on
        the rest: what the first one writes (the encoded corpus), the next ones reuse.

        `work` must not use collectives itself: a process that fails in it skips them.
        """
        if self.size == 1:
            return work()
        turn = 0 if self.is_main else 1 if self.local_rank == 0 else 2
        result = error = None
        for stage in range(3):
            if stage == turn:
                result, error = _attempt(work)
            self._settle(error)  # everyone hears of a failure before the next turn starts
        return result

    def _settle(self, error: Reported | None) -> None:
        """Raise the first failing process's error on every process, if there is one."""
        every: list = [None] * self.size
        with self._collective():
            dist.all_gather_object(every, _describe(error))
        failed = [rank for rank, failure in enumerate(every) if failure is not None]
        if not failed:
            return
        first = failed[0]
        if first == self.rank:
            raise error
        message, exit_code = every[first]
        raise ProcessFailed(f"{message} (on rank {first})", exit_code)

    @contextlib.contextmanager
    def averaging_gradients(self) -> Iterator[None]:
        """Around a training step, whose backward pass is a collective under DDP.

        A peer that died mid-step shows there as an error of the transport (gloo's "Connection
        closed by peer"): this process stops like any collective that lost a peer. Every other
        error is this process's own and keeps its traceback.
        """
        try:
            yield
        except RuntimeError as exc:
            if self.size == 1 or not _transport_failure(exc):
                raise
            self.broken = True
            raise ProcessFailed(self._peer_lost(exc, bounded=True)) from exc

    @contextlib.contextmanager
    def _collective(self, bounded: bool = False) -> Iterator[None]:
        """Around a collective; `bounded`: one of the step group's (train.peer_timeout)."""
        # A process that exits mid-run closes its connections: the others' next collective
        # fails. Their tracebacks would bury the error that matters, printed by that process.
        try:
            yield
        except RuntimeError as exc:
            self.broken = True
            raise ProcessFailed(self._peer_lost(exc, bounded)) from exc

    def _peer_lost(self, exc: RuntimeError, bounded: bool) -> str:
        """Why this process stops after a collective failed with `exc`: a peer gone, or hung."""
        if "timed out" not in str(exc).lower():
            return PEER_LOST
        if bounded and self.peer_timeout is not None:
            waited = f"for {self.peer_timeout:g} s (train.peer_timeout)"
        else:  # the start, or a checkpoint write: torch.distributed's own bound
            waited = "within torch.distributed's timeout (30 minutes)"
        return (f"another process of this run did not answer {waited}: it, or its machine, "
                "hangs; this one stopped too, and torchrun restarts the job from last.pt if "
                "--max-restarts allows")


def _leave() -> None:
    with contextlib.suppress(RuntimeError):  # a group that a dead process broke
        dist.destroy_process_group()


def _transport_failure(exc: RuntimeError) -> bool:
    """Whether `exc` comes from the connections between processes rather than the step itself."""
    # DDP re-raises gloo's errors as plain RuntimeErrors that name their source file.
    return isinstance(exc, dist.DistError) or any(
        source in str(exc) for source in ("gloo", "NCCL", "ProcessGroup"))


def _attempt(work: Callable[[], T]) -> tuple[T | None, Reported | None]:
    try:
        return work(), None
    except REPORTED as exc:
        return None, exc


def _describe(error: Reported | None) -> tuple[str, int] | None:
    return None if error is None else (str(error), error.exit_code)
