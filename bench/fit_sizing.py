"""The experiments behind `model.size: auto`, and the fit of its loss rule to them.

    python bench/fit_sizing.py run JOBS.jsonl RESULTS.jsonl [--worker I --workers N]
    python bench/fit_sizing.py fit RESULTS.jsonl

`run` trains tiny-shakespeare once per job for a step budget (not a time budget, so the result
does not depend on how busy the machine is: two workers of one thread each can share it), with
a cosine schedule over those steps, and scores the whole validation split; a job is a JSON line
{"layers", "hidden", "steps", "lr", "dropout", "batch", "seq"}. Jobs already in RESULTS are
skipped, so a stopped run continues.

`fit` finds the constants of autosize.py's rule,
    loss = E + A / N^alpha + B / D^beta + DEPTH * (layers - 1),
N the parameters, D the characters read counted at a discount once they repeat the
corpus (REPEAT_HALF_LIFE), by least squares: E, A, B and DEPTH exactly for each alpha, beta
and half-life on a grid. It prints the constants, each run's residual, and the
leave-one-shape-out error: how well the rule predicts a shape it was not fitted to.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import shakespeare  # noqa: E402

from charrnn import autosize  # noqa: E402

JOB_KEYS = ("layers", "hidden", "steps", "lr", "dropout", "batch", "seq")
BASE = ["data.val_fraction=0.1", "model.embedding_dim=64", "model.cell=lstm",
        "optim.weight_decay=0.1", "optim.grad_clip=1.0", "optim.schedule=cosine",
        "optim.warmup=0.02", "optim.min_lr=0.00001", "train.max_time=null",
        "train.eval_every=0", "train.final_eval_chars=null", "train.precision=fp32",
        "train.threads=1", "train.log_every=100000"]


def run(jobs_path: Path, results_path: Path, worker: int, workers: int) -> None:
    from charrnn.config import load_config
    from charrnn.model import CharRNN, ModelArgs
    from charrnn.train import train

    corpus = shakespeare()
    jobs = [json.loads(line) for line in jobs_path.read_text().splitlines() if line.strip()]
    done = {_key(r) for r in _records(results_path)}
    for index, job in enumerate(jobs):
        if index % workers != worker or _key(job) in done:
            continue
        with tempfile.TemporaryDirectory() as run_dir:
            config = load_config(None, [*BASE, f"data.path={corpus}", f"train.out_dir={run_dir}",
                                        *(f"{k}={v}" for k, v in _overrides(job).items())])
            start = time.perf_counter()
            result = train(config)
        args = ModelArgs(vocab_size=66, num_layers=job["layers"], hidden_size=job["hidden"])
        record = {**job, "chars": job["steps"] * job["batch"] * job["seq"],
                  "parameters": CharRNN(args).num_parameters(), "val": result.final.loss,
                  "seconds": time.perf_counter() - start}
        with results_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(record, flush=True)


def _overrides(job: dict) -> dict:
    return {"model.num_layers": job["layers"], "model.hidden_size": job["hidden"],
            "train.max_steps": job["steps"], "optim.lr": job["lr"],
            "model.dropout": job["dropout"], "data.batch_size": job["batch"],
            "data.seq_len": job["seq"]}


def _key(job: dict) -> str:
    return json.dumps({k: job[k] for k in JOB_KEYS}, sort_keys=True)


def _records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def fit(results_path: Path, corpus_chars: int = 1_003_854) -> None:
    from charrnn.model import CharRNN, ModelArgs

    records = _records(results_path)
    for r in records:
        if "parameters" not in r:
            args = ModelArgs(vocab_size=66, num_layers=r["layers"], hidden_size=r["hidden"])
            r["parameters"] = CharRNN(args).num_parameters()
    n = np.array([r["parameters"] for r in records], dtype=float)
    d = np.array([r["chars"] for r in records], dtype=float)
    depth = np.array([r["layers"] - 1 for r in records], dtype=float)
    loss = np.array([r["val"] for r in records])
    best = None
    for alpha, beta, half_life in itertools.product(np.arange(0.05, 1.21, 0.025),
                                                    np.arange(0.05, 1.01, 0.025),
                                                    (2, 4, 8, 12, 20, 40, 1e9)):
        constants, error = _solve(n, d, depth, loss, alpha, beta, half_life, corpus_chars)
        if constants is not None and (best is None or error < best[0]):
            best = (error, alpha, beta, half_life, constants)
    error, alpha, beta, half_life, (e, a, b, per_layer) = best
    print(f"E={e:.4f} A={a:.4g} alpha={alpha:.3f} B={b:.4g} beta={beta:.3f} "
          f"DEPTH={per_layer:.4f} "
          f"half_life={half_life:g} epochs; rms error {error:.4f} nats/char over "
          f"{len(records)} runs")
    for r in records:
        predicted = _predict(r, (e, a, b, per_layer), alpha, beta, half_life, corpus_chars)
        print(f"  {r['layers']}x{r['hidden']:<5} {r['chars'] / 1e6:6.1f}M chars  batch "
              f"{r['batch']:>3}  lr {r['lr']:<7g} dropout {r['dropout']:<4g} val {r['val']:.4f}"
              f"  predicted {predicted:.4f}  ({predicted - r['val']:+.4f})")
    shapes = sorted({(r["layers"], r["hidden"]) for r in records})
    held_out = []
    for shape in shapes:
        train_rows = np.array([(r["layers"], r["hidden"]) != shape for r in records])
        constants, _ = _solve(n[train_rows], d[train_rows], depth[train_rows], loss[train_rows],
                              alpha, beta, half_life, corpus_chars)
        if constants is None:
            continue
        for r in (r for r in records if (r["layers"], r["hidden"]) == shape):
            held_out.append(_predict(r, constants, alpha, beta, half_life, corpus_chars)
                            - r["val"])
    if held_out:
        print(f"leave-one-shape-out rms error: {np.sqrt(np.mean(np.square(held_out))):.4f}")


def _solve(n, d, depth, loss, alpha, beta, half_life, corpus_chars):
    if len(loss) < 5:
        return None, np.inf
    autosize.REPEAT_HALF_LIFE = half_life
    effective = np.array([autosize.effective_chars(c, corpus_chars) for c in d])
    design = np.stack([np.ones_like(n), n ** -alpha, effective ** -beta, depth], axis=1)
    constants, *_ = np.linalg.lstsq(design, loss, rcond=None)
    if constants[1] < 0 or constants[2] < 0:
        return None, np.inf
    return constants, float(np.sqrt(np.mean(np.square(design @ constants - loss))))


def _predict(record, constants, alpha, beta, half_life, corpus_chars):
    e, a, b, per_layer = constants
    autosize.REPEAT_HALF_LIFE = half_life
    return (e + a / record["parameters"] ** alpha + per_layer * (record["layers"] - 1)
            + b / autosize.effective_chars(record["chars"], corpus_chars) ** beta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    runner = sub.add_parser("run", help="train the jobs not yet in RESULTS")
    runner.add_argument("jobs", type=Path)
    runner.add_argument("results", type=Path)
    runner.add_argument("--worker", type=int, default=0)
    runner.add_argument("--workers", type=int, default=1)
    fitter = sub.add_parser("fit", help="fit the loss rule to RESULTS")
    fitter.add_argument("results", type=Path)
    args = parser.parse_args()
    if args.command == "run":
        run(args.jobs, args.results, args.worker, args.workers)
    else:
        fit(args.results)


if __name__ == "__main__":
    main()
