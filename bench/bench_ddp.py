"""Data-parallel scaling on the CPU: training chars/s of one process against two under torchrun.

    python bench/bench_ddp.py [--steps 80] [--hidden 256] [--batch 32]

Three runs of `charrnn train` on tiny-shakespeare, same model, same global batch
(data.batch_size is the total over all processes), fp32, no evaluation until the end:

    1 process, 1 thread        what one core gives: the baseline
    1 process, 2 threads       the second core used by intra-op threads, without DDP
    2 processes x 1 thread     torchrun --nproc_per_node=2, gloo: half the batch each, DDP

The speed of a run is the median of the chars/s that rank 0 logs (all processes together),
leaving out the first interval (warm-up). Scaling efficiency is speed(2 processes) over
2 x speed(1 process, 1 thread): 100% means the second process doubled the throughput.

On several machines, the same command runs under torchrun on every one of them; for two
machines with 8 GPUs each (HOST: the first machine's address, reachable from the other):

    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d \\
        --rdzv_endpoint=HOST:29500 -m charrnn train --config configs/X.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, shakespeare, table  # noqa: E402

SETUPS = [("1 process, 1 thread", 1, 1), ("1 process, 2 threads", 1, 2),
          ("2 processes x 1 thread (gloo)", 2, 1)]


def chars_per_second(processes: int, threads: int, overrides: list[str]) -> float:
    """Median logged training speed of one run, in chars/s over all processes."""
    with tempfile.TemporaryDirectory() as run_dir:
        train = ["-m", "charrnn", "train", *overrides, "--set", f"train.threads={threads}",
                 "--set", f"train.out_dir={run_dir}", "--quiet"]
        if processes > 1:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       f"--nproc_per_node={processes}", *train]
        else:
            command = [sys.executable, *train]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
        lines = (Path(run_dir) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        speeds = [r["chars_per_sec"] for r in map(json.loads, lines) if r["kind"] == "train"]
        return statistics.median(speeds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80, help="training steps per run")
    parser.add_argument("--hidden", type=int, default=256, help="LSTM units per layer")
    parser.add_argument("--batch", type=int, default=32, help="global data.batch_size")
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()
    log_every = max(1, args.steps // 8)
    overrides = [f"--set={kv}" for kv in (
        f"data.path={shakespeare()}", f"data.batch_size={args.batch}",
        f"data.seq_len={args.seq_len}", "model.cell=lstm", "model.num_layers=2",
        f"model.hidden_size={args.hidden}", "model.embedding_dim=64", "model.dropout=0",
        "train.device=cpu", "train.precision=fp32", f"train.max_steps={args.steps}",
        f"train.log_every={log_every}", "train.eval_every=0", "train.final_eval_chars=2000")]
    print(f"machine: {machine()}; load average before the runs: {os.getloadavg()[0]:.2f} "
          "(anything else running skews these numbers)")
    print(f"model: lstm 2x{args.hidden}, embedding 64, fp32; global batch {args.batch} x "
          f"{args.seq_len} chars; {args.steps} steps per run, speed logged every {log_every}")
    speeds = {name: chars_per_second(processes, threads, overrides)
              for name, processes, threads in SETUPS}
    base = speeds[SETUPS[0][0]]
    rows = [[name, f"{speed:,.0f}", f"{speed / base:.2f}x",
             f"{100 * speed / (base * max(processes, threads)):.0f}%"]
            for (name, processes, threads), speed in zip(SETUPS, speeds.values(), strict=True)]
    print(table(rows, ["setup", "chars/s", "speed-up", "efficiency (per core)"]))
    ddp = speeds[SETUPS[2][0]]
    print(f"scaling efficiency 1 -> 2 processes: {100 * ddp / (2 * base):.0f}% "
          f"({ddp / speeds[SETUPS[1][0]]:.2f}x the speed of one process with 2 threads)")


if __name__ == "__main__":
    main()
