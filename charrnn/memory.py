"""Memory: what the machine can hold, and what a model needs to be built, trained, sampled
and scored, compared before anything is allocated.

Without these checks a size too big for the machine (a hidden_size of 60,000, 10^8 samples)
ends in an out-of-memory traceback, or in the kernel's OOM killer, minutes later. Each check
raises `ResourceError` naming the keys or options to lower. The estimates are rough (within a
factor of about two of the peak) and only refuse what clearly cannot fit; the caught
out-of-memory error in cli/common.py remains the last line of defence.

Only memory in the host's RAM is checked: on a GPU, the weights are still built on the CPU
first, but activations live on the device, whose own out-of-memory error is caught instead.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
from pathlib import Path
from typing import TYPE_CHECKING

from charrnn.errors import ResourceError

# A foundation: it imports nothing of charrnn's but errors, and knows a model only by the
# numbers in its settings, so that data loading, plotting and the CLI use it without torch.
if TYPE_CHECKING:
    import torch

    from charrnn.config import DataConfig
    from charrnn.model import ModelArgs

FLOAT = 4  # bytes per float32
GATES = {"rnn": 1, "gru": 3, "lstm": 4}  # weight blocks per layer, stacked
CGROUP = Path("/sys/fs/cgroup")
MAX_VOCAB = 0x110000 + 1  # every Unicode code point, and <unk>


# ---- what the machine has -------------------------------------------------------------------
def available_bytes() -> int | None:
    """Memory this process can still allocate: the least of what the kernel says is available,
    what this process's cgroup allows, and its address-space limit. None when unknown."""
    limits = [_meminfo_available(), _cgroup_room(), _address_space_room()]
    known = [limit for limit in limits if limit is not None]
    return max(0, min(known)) if known else None


def _meminfo_available() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def _cgroup_room() -> int | None:
    """The limit less the usage of this process's cgroup (v2, else v1), if it has a limit."""
    places = [(CGROUP / "memory.max", CGROUP / "memory.current"),
              (CGROUP / "memory" / "memory.limit_in_bytes",
               CGROUP / "memory" / "memory.usage_in_bytes")]
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::/") and line.strip() != "0::/":  # v2, seen from the host
                own = CGROUP / line.strip()[4:]
                places.insert(0, (own / "memory.max", own / "memory.current"))
    for limit_file, usage_file in places:
        with contextlib.suppress(OSError, ValueError):
            limit = limit_file.read_text().strip()
            if limit == "max" or int(limit) >= 1 << 60:  # v1 writes "no limit" as a huge number
                return None
            return int(limit) - int(usage_file.read_text().strip())
    return None


def _address_space_room() -> int | None:
    """RLIMIT_AS less the address space already mapped (ulimit -v)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    used = _address_space_used()
    if soft == resource.RLIM_INFINITY or used is None:
        return None
    return soft - used


def _address_space_used() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return None


def check_fits(need: int, what: str, fix: str) -> None:
    """Refuse `what` if it needs more memory than is available; `fix` says what to lower."""
    available = available_bytes()
    if available is not None and need > available:
        raise ResourceError(f"{what} needs about {format_bytes(need)} of memory but only "
                            f"{format_bytes(available)} is available; {fix}")


def format_bytes(n: int | float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n / 1e3:,.1f} kB"


# ---- what a model needs ---------------------------------------------------------------------
def weight_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    """The name and shape of every weight CharRNN(args) has, computed without building it.

    The layout of nn.Embedding, nn.RNN/GRU/LSTM (gates stacked in the first dimension) and
    nn.Linear; tests/test_memory.py checks it against real models of every cell, so a change
    to model.py that this misses fails there. (Building on the meta device instead would
    cost a second of start-up the first time.)
    """
    gates = GATES[args.cell] * args.hidden_size
    shapes = {"embedding.weight": (args.vocab_size, args.embedding_dim)}
    for layer in range(args.num_layers):
        inputs = args.embedding_dim if layer == 0 else args.hidden_size
        shapes[f"rnn.weight_ih_l{layer}"] = (gates, inputs)
        shapes[f"rnn.weight_hh_l{layer}"] = (gates, args.hidden_size)
        shapes[f"rnn.bias_ih_l{layer}"] = (gates,)
        shapes[f"rnn.bias_hh_l{layer}"] = (gates,)
    shapes["head.weight"] = (args.vocab_size, args.hidden_size)
    shapes["head.bias"] = (args.vocab_size,)
    return shapes


def parameter_count(args: ModelArgs) -> int:
    return sum(math.prod(shape) for shape in weight_shapes(args).values())


def _per_position(args: ModelArgs) -> int:
    """Floats one character position of one stream keeps through a forward pass: embedding,
    every layer's gates, state and output, and the logits with their softmax."""
    gates = GATES[args.cell]
    return args.embedding_dim + args.num_layers * (gates + 3) * args.hidden_size \
        + 3 * args.vocab_size


SIZE_KEYS = "model.hidden_size, model.num_layers or model.embedding_dim"


def check_model(args: ModelArgs, what: str = "the model", fix: str = f"lower {SIZE_KEYS}"
                ) -> None:
    """Building the model's weights (float32)."""
    parameters = parameter_count(args)
    check_fits(FLOAT * parameters, f"{what} ({parameters:,} parameters)", fix)


def check_training(args: ModelArgs, data: DataConfig, train_chars: int, device: torch.device,
                   inherited: bool = False) -> None:
    """Weights, gradients and AdamW's two moments, and one step's activations (on the CPU).

    `inherited`: the model comes from a checkpoint, whose size the config cannot change.
    """
    fix = ("lower data.batch_size or data.seq_len" if inherited
           else f"lower data.batch_size, data.seq_len, {SIZE_KEYS}")
    if device.type != "cpu":
        check_model(args, fix=fix)
        return
    batch = data.batch_size
    if data.batching == "stream":  # a short text holds fewer streams (batches.py)
        batch = min(batch, max(1, train_chars // data.seq_len))
    parameters = parameter_count(args)
    weights = 5 * FLOAT * parameters  # weights, gradients, two moments, fused-step scratch
    activations = 2 * FLOAT * batch * data.seq_len * _per_position(args)  # forward, backward
    check_fits(weights + activations, f"training ({parameters:,} parameters, {batch:,} streams "
               f"x data.seq_len {data.seq_len:,})", fix)


def sampling_bytes(args: ModelArgs, num_samples: int, prime_length: int) -> int:
    """Reading the prime (once: every sample starts from its state), then one step at a time
    for every sample. `prime_length`: the characters read in one call (a prime is read in
    pieces of sample.PRIME_PIECE)."""
    prime = max(prime_length, 1) * _per_position(args)
    step = num_samples * (8 * args.vocab_size + 6 * args.num_layers * args.hidden_size)
    return FLOAT * (prime + step)


def scoring_bytes(args: ModelArgs, streams: int, chunk: int) -> int:
    """One chunk of `chunk` positions for each of `streams` parallel segments."""
    return FLOAT * streams * chunk * (_per_position(args) + args.vocab_size)
