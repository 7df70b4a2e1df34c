"""Choosing where and in what precision to run: CUDA, then MPS, then CPU.

Every choice of device is made here: `pick_device` for sampling and scoring, and
`training_device` for training, alone or as one of the processes torchrun started.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch

from charrnn.config import usable_cores
from charrnn.errors import ConfigError, UsageError


def pick_device(name: str = "auto", option: str = "--set train.device") -> torch.device:
    """The device `name` means; `option` is how the user chose it (named in errors)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("device 'cuda' was asked for but CUDA is not available (no NVIDIA GPU or "
                         f"a CPU-only torch build); use {option}=auto or cpu")
    if name == "mps" and not _mps_available():
        raise UsageError("device 'mps' was asked for but Apple's MPS is not available; use "
                         f"{option}=auto or cpu")
    if name not in ("cpu", "cuda", "mps"):
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda or mps")
    return torch.device(name)


def named_device(device: torch.device | str, option: str = "device") -> torch.device:
    """A device a program named (a torch.device, or auto, cpu, cuda, cuda:N, mps), refused in
    one line where this machine has none: torch's own refusal of "cuda" on a CPU-only build
    was an AssertionError, of "gpu" a RuntimeError."""
    text = str(device)  # torch.device("cuda", 1) prints as cuda:1
    base, colon, index = text.partition(":")
    picked = pick_device(base, option)
    if not colon:
        return picked
    if not index.isdigit() or (base != "cuda" and index != "0"):  # mps:0, cpu:0 are fine
        raise UsageError(f"unknown device {text!r}; use auto, cpu, cuda, cuda:N or mps")
    if base == "cuda" and int(index) >= torch.cuda.device_count():
        raise UsageError(f"device {text!r} was asked for but this machine has "
                         f"{torch.cuda.device_count()} CUDA device(s); use {option}=cuda or cpu")
    return torch.device(text)


def training_device(name: str, local_rank: int | None = None) -> torch.device:
    """The device to train on: `name` (train.device) for one process; under torchrun
    (`local_rank` given) this process's own GPU, or the CPU."""
    device = pick_device(name)
    if local_rank is None:
        return device
    if device.type == "mps":
        if name != "auto":
            raise UsageError("training under torchrun runs on CUDA (NCCL) or the CPU (gloo); "
                             "MPS has no collective backend: use --set train.device=cpu")
        device = torch.device("cpu")
    if device.type == "cuda":
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        count = torch.cuda.device_count()
        if processes > count:
            raise UsageError(f"torchrun started {processes} processes on this machine but it "
                             f"has {count} CUDA device{'s' if count != 1 else ''}; use "
                             f"--nproc_per_node={count} (one process per GPU), or "
                             "--set train.device=cpu")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        threads = torch.get_num_threads()
        return f"cpu ({threads} thread{'s' if threads != 1 else ''})"
    return device.type


def bf16_runs(device: torch.device, cell: str = "lstm") -> bool:
    """Whether training this cell in bf16 autocast works on this device at all (fast or not:
    speed.py measures that). MPS's bf16 recurrent kernels are not reliable enough to try."""
    if device.type not in ("cuda", "cpu"):
        return False
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return False
    return _rnn_trains_in_bf16(device, cell)


@functools.cache
def _rnn_trains_in_bf16(device: torch.device, cell: str) -> bool:
    """A tiny trial step under bf16 autocast. Some stacks raise inside the recurrent module
    instead: cuDNN before 9.13 or before Ampere, and oneDNN's LSTM on CPUs without bf16
    instructions (an AVX2-only EPYC: "could not create a primitive descriptor"), where its
    GRU and RNN run. The run then trains in fp32 instead of failing."""
    module = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    try:
        rnn = module(8, 8, batch_first=True).to(device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            out, _ = rnn(torch.randn(2, 3, 8, device=device))
        out.float().sum().backward()
        return True
    except RuntimeError:
        return False


def check_bf16_trains(device: torch.device, cell: str) -> None:
    """Refuse train.precision: bf16 where this cell's kernels do not train in it."""
    if not bf16_runs(device, cell):
        raise ConfigError([f"'train.precision' is bf16, but {cell.upper()} layers do not train "
                           f"in bf16 on this {device.type} (its kernels refuse it); use fp32 "
                           "or auto"])


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def serving_threads(models: int, threads: int | None = None) -> int:
    """Torch threads for each of a server's `models` engines: `threads` in all (default: every
    usable core), shared out so that together they never hold more threads than that.

    Each engine steps its batch in a thread of its own, and GNU OpenMP (torch's CPU threads)
    lets the threads of every team give up their cores while they wait once the process
    holds more OpenMP threads than cores, counting idle teams too: then every operation of
    every model pays for waking its threads. On 2 cores, a step in the engine's thread with
    two threads ran 3-4 times slower after the main thread had once run the model with two
    (BENCHMARKS.md, Serving); so the main thread, which only loads the models and serves
    HTTP, keeps one thread, and the engines share the rest.
    """
    return max((threads or usable_cores()) // max(models, 1), 1)


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
