"""Torch's CPU threads outside the main thread: a step's product timed on the main thread and
on another thread, before and after the main thread has used its own team of threads.

GNU OpenMP (torch's CPU threads) makes the threads of every team give up their cores while
they wait once the process holds more OpenMP threads than cores, idle teams counted. The
first layer's product of a 2x256 LSTM for one stream (8 blocks of 256x256, as BlockStepper
runs it) is timed in four settings, each in a fresh process:

    python bench/openmp_threads.py [--threads 2]

Why `charrnn serve` keeps one torch thread on its main thread (devices.serving_threads).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table  # noqa: E402

CASES = {
    "main thread": ("main", None),
    "another thread, main thread never used torch": ("other", None),
    "another thread, after the main thread used 1 thread": ("other", 1),
    "another thread, after the main thread used N threads": ("other", "N"),
}


def product_us(threads: int, repeats: int = 5000) -> float:
    """Mean microseconds of the product, on the calling thread with `threads` threads."""
    torch.set_num_threads(threads)
    h, blocks, bias = torch.randn(8, 1, 256), torch.randn(8, 256, 256), torch.randn(8, 1, 256)
    for _ in range(200):
        torch.baddbmm(bias, h, blocks)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.baddbmm(bias, h, blocks)
    return (time.perf_counter() - start) / repeats * 1e6


def measure(where: str, main_first: int | None, threads: int) -> float:
    """One case, in this process (called in a fresh one by main())."""
    if main_first is not None:
        product_us(main_first, repeats=500)
    if where == "main":
        return product_us(threads)
    result: list[float] = []
    worker = threading.Thread(target=lambda: result.append(product_us(threads)))
    worker.start()
    worker.join()
    return result[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="threads of the timed thread")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:  # a child: one case, its time on stdout
        where, first = CASES[args.case]
        print(measure(where, args.threads if first == "N" else first, args.threads))
        return
    print(f"machine: {machine()}; timed thread: {args.threads} torch threads")
    rows = []
    for case in CASES:
        out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads),
                              "--case", case], check=True, capture_output=True, text=True,
                             timeout=300)
        rows.append([case.replace("N threads", f"{args.threads} threads"),
                     f"{float(out.stdout):.1f}"])
    print(table(rows, ["where the product runs", "us per product"]))


if __name__ == "__main__":
    main()
