"""Helpers shared by the benchmark scripts: timing, FLOP counting, corpus lookup, tables."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# Forward FLOPs per character per layer, per unit of H*(in+H): 4 gates for LSTM, 3 for GRU,
# 1 for a plain RNN, 2 FLOPs per multiply-add. A training step costs about 3x the forward.
GATE_FLOPS = {"lstm": 8, "gru": 6, "rnn": 2}


def rnn_flops_per_char(cell: str, embedding: int, hidden: int, layers: int,
                       training: bool = True) -> float:
    forward = sum(GATE_FLOPS[cell] * hidden * ((embedding if i == 0 else hidden) + hidden)
                  for i in range(layers))
    return forward * (3 if training else 1)


def matmul_flops(dtype: torch.dtype, device: torch.device,
                 sizes: tuple[int, ...] = (1024, 2048, 4096), seconds: float = 1.0) -> float:
    """FLOP/s of the fastest large square matmul: the practical peak for this dtype.

    Sizes are tried smallest first and a size is skipped once one product of the size before
    took over a second: where a dtype is emulated (bf16 on a CPU without bf16 units runs at
    about 1 GFLOP/s) a 4096x4096 product would take minutes.
    """
    best = 0.0
    for size in sizes:
        if best and 2 * size**3 / best > seconds:
            break
        best = max(best, _matmul_flops(dtype, device, size, seconds))
    return best


def _matmul_flops(dtype: torch.dtype, device: torch.device, size: int,
                  seconds: float) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    sync(device)
    count, start = 0, time.perf_counter()
    while count < 1 or time.perf_counter() - start < seconds:
        a @ b
        count += 1
    sync(device)
    return 2 * size**3 * count / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} cores{gpu}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def shakespeare() -> Path:
    for candidate in (ROOT / "data" / "tinyshakespeare.txt", SHARED_DATA / "tinyshakespeare.txt"):
        if candidate.is_file():
            return candidate
    raise SystemExit("tiny-shakespeare not found: run `charrnn data get tiny-shakespeare` first")


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True)) + " |"
              for r in rows]
    return "\n".join(lines)
