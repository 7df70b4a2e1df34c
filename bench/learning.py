"""Learning per second: charrnn's shipped config against nanoGPT's CPU recipe, side by side.

Both train on tiny-shakespeare with nanoGPT's split (validation = the last 10%, 111,540
characters) in the same process, one after the other, and are scored on the same text:
- full pass: every validation character scored once with all the context before it (for the
  RNN, the recurrent state carried through the whole text);
- window 64: every character scored with at most 64 characters of context (0..63), as
  nanoGPT's block_size=64 model sees it.

    python bench/learning.py [--config configs/shakespeare_cpu.yaml] [--skip-reference]

With --sweep it instead trains, for each time budget (60, 165 and 600 s) and precision, a hand
grid of configs and the auto-sized run (`model.size: auto`), side by side:

    python bench/learning.py --sweep [--budgets 60,165,600] [--precisions fp32,bf16]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import babygpt  # noqa: E402
from common import ROOT, machine, shakespeare, table  # noqa: E402

from charrnn.checkpoint import load_model  # noqa: E402
from charrnn.config import load_config  # noqa: E402
from charrnn.data import load_dataset  # noqa: E402
from charrnn.evaluate import score_stream, score_windows  # noqa: E402
from charrnn.model import ModelArgs  # noqa: E402
from charrnn.train import train  # noqa: E402

NANOGPT_DOCUMENTED = 1.886  # val loss of the CPU recipe on this machine, per the issue


def run_charrnn(config_path: Path, corpus: Path, max_time: float | None) -> dict:
    with tempfile.TemporaryDirectory() as run_dir:
        overrides = [f"data.path={corpus}", f"train.out_dir={run_dir}"]
        if max_time is not None:
            overrides.append(f"train.max_time={max_time}")
        config = load_config(config_path, overrides)
        start = time.perf_counter()
        result = train(config)
        wall = time.perf_counter() - start
        model, vocab, _ = load_model(Path(run_dir) / "last.pt")
        data = load_dataset(config.data, Path(run_dir), vocab)
        device = torch.device("cpu")
        t0 = time.perf_counter()
        full = score_stream(model, data.val, device)
        full_seconds = time.perf_counter() - t0
        exact = score_stream(model, data.val, device, streams=1)
        window = score_windows(model, data.val, 64, device)
        return {"name": f"charrnn {config_path.name}", "train_s": result.elapsed,
                "wall_s": wall, "steps": result.step, "full": full.loss, "exact": exact.loss,
                "window": window.loss, "chars": full.chars, "eval_s": full_seconds,
                "params": model.num_parameters()}


# The hand grid: one-layer and two-layer LSTMs from narrow to wide, each with the learning
# rate that suits its width; batch 16 x 64, dropout 0.1, weight decay 0.1, cosine to 1e-5.
GRID = {"1x128": (1, 128, 1e-2), "1x256": (1, 256, 7e-3), "1x512": (1, 512, 5e-3),
        "1x768": (1, 768, 4e-3), "2x256": (2, 256, 5e-3), "2x512": (2, 512, 3e-3)}
SWEEP_BASE = ["data.val_fraction=0.1", "data.batch_size=16", "data.seq_len=64",
              "model.embedding_dim=64", "model.dropout=0.1", "optim.weight_decay=0.1",
              "optim.min_lr=1e-5", "optim.warmup=0.02", "train.max_steps=null",
              "train.eval_every=0", "train.final_eval_chars=null", "train.log_every=1000"]


def sweep_run(corpus: Path, budget: float, precision: str, extra: list[str]) -> dict:
    """One run of the sweep: train for `budget` seconds, score the whole validation split."""
    with tempfile.TemporaryDirectory() as run_dir:
        overrides = [f"data.path={corpus}", f"train.out_dir={run_dir}",
                     f"train.max_time={budget}", f"train.precision={precision}", *extra]
        result = train(load_config(None, overrides))
        saved = load_config(Path(run_dir) / "config.yaml")
        return {"shape": f"{saved.model.num_layers}x{saved.model.hidden_size}",
                "loss": result.final.loss, "steps": result.step}


def sweep(corpus: Path, budgets: list[float], precisions: list[str],
          shapes: list[str] | None = None) -> None:
    from charrnn.speed import precisions_to_try

    probe = precisions_to_try("auto", ModelArgs(vocab_size=66), 16, torch.device("cpu"))
    rows = []
    for budget in budgets:
        for precision in precisions:
            if precision not in probe:
                print(f"{precision} skipped at {budget:g} s: emulated on this CPU (a matmul "
                      "probe runs it at under half fp32's speed)", flush=True)
                continue
            grid = {}
            for name, (layers, hidden, lr) in GRID.items():
                if shapes and name not in shapes:
                    continue
                grid[name] = sweep_run(corpus, budget, precision, [
                    *SWEEP_BASE, "model.size=fixed", f"model.num_layers={layers}",
                    f"model.hidden_size={hidden}", f"optim.lr={lr}"])
                print(budget, precision, name, grid[name], flush=True)
            auto = sweep_run(corpus, budget, precision, ["model.size=auto"])
            print(budget, precision, "auto", auto, flush=True)
            best = min(grid, key=lambda name: grid[name]["loss"])
            rows.append([f"{budget:g} s", precision,
                         *(f"{grid[name]['loss']:.4f}" if name in grid else "–" for name in GRID),
                         f"{best} {grid[best]['loss']:.4f}",
                         f"{auto['shape']} {auto['loss']:.4f}",
                         f"{auto['loss'] - grid[best]['loss']:+.4f}"])
    print()
    print(table(rows, ["budget", "precision", *GRID, "grid best", "auto (shape)",
                       "auto - best"]))


def run_reference(corpus: Path) -> dict:
    from charrnn.config import DataConfig

    with tempfile.TemporaryDirectory() as cache:
        data = load_dataset(DataConfig(path=str(corpus)), Path(cache))
    model, iters, seconds = babygpt.train_recipe(data.train, data.vocab.size)
    window = babygpt.score_windows(model, data.val)
    return {"name": "nanoGPT CPU recipe (4x128 GPT)", "train_s": seconds, "wall_s": seconds,
            "steps": iters, "full": None, "exact": None, "window": window,
            "chars": len(data.val) - 1, "eval_s": None,
            "params": sum(p.numel() for p in model.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "shakespeare_cpu.yaml")
    parser.add_argument("--skip-reference", action="store_true",
                        help="only train charrnn (the reference takes about 3 minutes)")
    parser.add_argument("--time", type=float, default=None,
                        help="override the config's train.max_time (seconds), for smoke runs")
    parser.add_argument("--sweep", action="store_true",
                        help="the budget sweep: a hand grid against model.size: auto")
    parser.add_argument("--budgets", default="60,165,600", help="seconds, comma-separated")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated")
    parser.add_argument("--grid", help="only these of the hand grid, e.g. 1x256,1x512 "
                        f"(default: all of {','.join(GRID)})")
    args = parser.parse_args()
    corpus = shakespeare()
    print(f"machine: {machine()}")
    if args.sweep:
        sweep(corpus, [float(b) for b in args.budgets.split(",")], args.precisions.split(","),
              args.grid.split(",") if args.grid else None)
        return
    results = [run_charrnn(args.config, corpus, args.time)]
    print(results[-1], flush=True)
    if not args.skip_reference:
        results.append(run_reference(corpus))
        print(results[-1], flush=True)

    def fmt(x):
        return "-" if x is None else f"{x:.4f}"

    rows = [[r["name"], f"{r['params']:,}", f"{r['steps']:,}", f"{r['train_s']:.0f}",
             fmt(r["full"]), fmt(r["exact"]), fmt(r["window"])] for r in results]
    print()
    print(table(rows, ["model", "parameters", "steps", "train s", "val full pass (nats/char)",
                       "val one sequential pass", "val window 64"]))
    ours = results[0]
    print(f"\ncharrnn: {ours['full']:.4f} nats/char ({ours['full'] / 0.6931:.4f} bits/char) "
          f"after {ours['train_s']:.0f} s of training; target <= 1.42")
    print(f"full-pass evaluation of {ours['chars']:,} chars took {ours['eval_s']:.1f} s; "
          f"it differs from one sequential pass by {abs(ours['full'] - ours['exact']):.5f}")
    if len(results) > 1:
        ref = results[1]
        print(f"nanoGPT recipe: {ref['window']:.4f} nats/char (window 64) after "
              f"{ref['train_s']:.0f} s ({ref['steps']} iterations); documented "
              f"{NANOGPT_DOCUMENTED}")
        print(f"ratio at window 64: charrnn / nanoGPT = {ours['window'] / ref['window']:.3f}; "
              f"full pass vs nanoGPT: {ours['full'] / ref['window']:.3f}")


if __name__ == "__main__":
    main()
