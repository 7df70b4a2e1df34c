"""Run every benchmark of BENCHMARKS.md, one after another, and print their tables.

    python bench/run.py            # everything: about 25 minutes on 2 CPU cores
    python bench/run.py --quick    # a smoke run of each script (a couple of minutes)

Each script compares charrnn with its baseline side by side in one process, so the ratios it
prints are free of machine-to-machine noise. Run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

FULL = [
    ["throughput.py"],
    ["sampling.py"],
    ["learning.py"],
    ["bench_data.py"],
    ["serve.py"],
    ["openmp_threads.py"],
]
QUICK = [
    ["throughput.py", "--seconds", "1"],
    ["sampling.py", "--length", "200"],
    ["learning.py", "--skip-reference", "--time", "10"],
    ["bench_data.py", "--quick"],
    ["serve.py", "--smoke"],
    ["openmp_threads.py"],
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run of each")
    args = parser.parse_args()
    for script, *options in QUICK if args.quick else FULL:
        print(f"\n===== {script} {' '.join(options)} =====", flush=True)
        start = time.perf_counter()
        subprocess.run([sys.executable, str(HERE / script), *options], check=True)
        print(f"({script}: {time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
