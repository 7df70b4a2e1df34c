"""How fast this machine trains: timed training steps of a model shape, in a precision.

charrnn makes its speed choices by measuring the machine at hand, never by a CPU flag or a
constant fitted to one CPU: the same bf16 matrix product runs at 1,600 GFLOP/s on a Xeon with
AMX, at 800 on an AVX-512-BF16 EPYC, and at about 1 on a CPU without bf16 (emulated), and
even where bf16 hardware exists, a recurrent step's short matrices may not use it well.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator

import torch

from charrnn import devices
from charrnn.model import CharRNN, ModelArgs

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
# bf16 must beat fp32 by this much to be chosen: its rounding costs a little accuracy.
BF16_MARGIN = 1.1


def prepare(device: torch.device) -> None:
    """Import what timing a training step needs before any clock starts, as the trainer does
    before its own: the first fused AdamW imports torch's compiler (1.4 s here), which cost
    auto-sizing its measuring time (one candidate measured of a 10 s budget)."""
    parameter = torch.nn.Parameter(torch.zeros(1, device=device))
    torch.optim.AdamW([parameter], fused=device.type in ("cuda", "cpu"))


def training_speed(args: ModelArgs, batch: int, seq_len: int, device: torch.device,
                   precision: str = "fp32", seconds: float = 0.3) -> float:
    """Characters per second of whole training steps (forward, backward, clipping, fused
    AdamW) of a fresh model of this shape, on random characters, timed for about `seconds`.

    Uses its own random generator: measuring never moves the training run's random state.
    """
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model = CharRNN(args).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4,
                                      fused=device.type in ("cuda", "cpu"))
        ids = torch.randint(0, args.vocab_size, (batch, seq_len + 1), generator=generator)
        x, y = ids[:, :-1].to(device), ids[:, 1:].to(device)
        dtype = PRECISIONS[precision]

        def step() -> None:
            with devices.autocast(device, dtype):
                _, loss, _ = model(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
            optimizer.step()

        step()  # the first step allocates and plans: not timed
        devices.synchronize(device)
        steps, start = 0, time.perf_counter()
        while steps < 2 or time.perf_counter() - start < seconds:
            step()
            steps += 1
            devices.synchronize(device)
        return steps * batch * seq_len / (time.perf_counter() - start)


def matmul_speed(rows: int, inner: int, cols: int, device: torch.device, dtype: torch.dtype,
                 seconds: float = 0.05) -> float:
    """FLOP/s of one (rows x inner) @ (inner x cols) product, timed for about `seconds`
    (at least one call, however slow)."""
    a = torch.randn(rows, inner, device=device).to(dtype)
    b = torch.randn(inner, cols, device=device).to(dtype)
    a @ b
    devices.synchronize(device)
    calls, start = 0, time.perf_counter()
    while calls < 1 or time.perf_counter() - start < seconds:
        a @ b
        calls += 1
    devices.synchronize(device)
    return 2 * rows * inner * cols * calls / (time.perf_counter() - start)


def precisions_to_try(name: str, args: ModelArgs, batch: int, device: torch.device) -> list[str]:
    """The precisions worth timing for `train.precision: name` on this device."""
    if name != "auto":
        return [name]
    if not devices.bf16_runs(device, args.cell):
        return ["fp32"]
    # A quick look at the recurrent step's own matrix product first: where bf16 is emulated
    # it is a hundred times slower, and timing whole training steps in it would take minutes.
    shape = (batch, args.embedding_dim + args.hidden_size, 4 * args.hidden_size)
    fp32 = matmul_speed(*shape, device, torch.float32)
    bf16 = matmul_speed(*shape, device, torch.bfloat16)
    return ["fp32", "bf16"] if bf16 > 0.5 * fp32 else ["fp32"]


def fastest_precision(args: ModelArgs, batch: int, seq_len: int, device: torch.device,
                      seconds: float = 0.3) -> tuple[str, dict[str, float]]:
    """The faster of fp32 and bf16 autocast for training this shape here, and the speeds
    (none when there is only one to try: timing fp32 alone cost each start a second)."""
    precisions = precisions_to_try("auto", args, batch, device)
    if len(precisions) == 1:
        return precisions[0], {}
    speeds = {p: training_speed(args, batch, seq_len, device, p, seconds) for p in precisions}
    return choose_precision(speeds), speeds


def choose_precision(speeds: dict[str, float]) -> str:
    """bf16 where it is clearly faster (BF16_MARGIN), else fp32."""
    if speeds.get("bf16", 0.0) > BF16_MARGIN * speeds.get("fp32", 0.0):
        return "bf16"
    return "fp32" if "fp32" in speeds else next(iter(speeds))


def fastest_threads(work: Callable[[], object], seconds: float = 0.004, rounds: int = 3) -> int:
    """The number of CPU threads (1, or torch's current count) that runs `work` faster here.

    Small operations, such as one generated character of one stream, can run slower on
    several threads than on one: waking the others costs more than they save, the more so on
    a busy machine. So it is measured, never assumed: `rounds` turns of about `seconds` each,
    alternating, and each count's fastest turn compared. Another process can only slow a turn
    down, and on a shared machine one turn each picked the slower count a third of the time.
    """
    most = torch.get_num_threads()
    if most == 1:
        return 1
    timings = {most: math.inf, 1: math.inf}
    for _ in range(rounds):
        for threads in (most, 1):  # `most` first: its warm-up also wakes the thread pool
            with using_threads(threads):
                work()
                calls, start = 0, time.perf_counter()
                while calls < 3 or time.perf_counter() - start < seconds:
                    work()
                    calls += 1
                timings[threads] = min(timings[threads], (time.perf_counter() - start) / calls)
    return min(timings, key=timings.get)


@contextlib.contextmanager
def using_threads(threads: int) -> Iterator[None]:
    """Run with `threads` CPU threads, then go back to what was set before."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
