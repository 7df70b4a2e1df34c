"""Data-pipeline benchmark: vocab/encode throughput, memory against corpus size, first batch.

    python bench/bench_data.py            # 100 MB and 2,000 MB corpora (a few minutes)
    python bench/bench_data.py --quick    # 10 MB and 100 MB (well under a minute)

Corpora are generated (shuffled lines of tiny-shakespeare, or of builtin:python-docs when it is
absent, with about 2% non-ASCII lines: accents, Cyrillic, Greek, Chinese, emoji) under
--work-dir, outside the repository, and kept for the next run. Every measurement runs in a
fresh subprocess so that peak resident memory (VmHWM) belongs to that measurement alone.
Targets (issue 5): vocab build and encoding >= 50 MB/s each; training on the large corpus with
peak RSS < 1,000 MB beyond torch + model + optimizer, flat in corpus size; first batch of a
cached large corpus < 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = [REPO / "data" / "tinyshakespeare.txt",  # where `charrnn data get` puts it
               REPO.parent / "shared" / "data" / "tinyshakespeare.txt"]
NON_ASCII_LINES = [
    "Café crème, naïve façade — déjà vu, encore.\n",
    "Grüße aus München: Größe, Übermaß und Äpfel.\n",
    "«Ça va ?» — “Oui,” dit-elle… ’tis so.\n",
    "Это просто тест: привет, мир!\n",
    "Ελληνικά: καλημέρα κόσμε.\n",
    "红楼梦：满纸荒唐言，一把辛酸泪。\n",
    "see you at 5 🙂 👍\n",
]
NON_ASCII_SHARE = 0.02  # of lines: enough that nearly every 4 MB block is not pure ASCII
VARIANTS = 32  # distinct shuffles of the line pool, written in random order
MB = 1_000_000

# The training runs: a tiny model, so that what is measured is the data pipeline.
MODEL = {"cell": "lstm", "embedding_dim": 16, "hidden_size": 64, "num_layers": 1}
BATCH_SIZE, SEQ_LEN, STEPS = 32, 64, 20
VAL_FRACTION = 0.001  # the final evaluation scores all of it: keep it small on a huge corpus


# ---- measuring ------------------------------------------------------------------------------
def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status, in MB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024 / MB  # the kernel reports kB
    except OSError:
        pass
    # No procfs (macOS, BSD): the peak is all getrusage offers (bytes on macOS, kB elsewhere).
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MB if sys.platform == "darwin" else peak * 1024 / MB


def rss_mb() -> float:
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    return _status_mb("VmHWM")


# ---- generated corpora ----------------------------------------------------------------------
def line_pool(seed: int = 0) -> tuple[list[str], str]:
    rng = random.Random(seed)
    for path in SHAKESPEARE:
        if path.is_file():
            lines, origin = path.read_text(encoding="utf-8").splitlines(keepends=True), path.name
            break
    else:
        from charrnn.corpus import builtin_sources

        text = builtin_sources("python-docs")[0].data.decode("utf-8")
        lines, origin = text.splitlines(keepends=True), "builtin:python-docs"
    extra = int(len(lines) * NON_ASCII_SHARE)
    lines += [rng.choice(NON_ASCII_LINES) for _ in range(extra)]
    return lines, origin


def make_corpus(work_dir: Path, size_mb: int) -> tuple[Path, str]:
    """A UTF-8 corpus of about size_mb MB (cut at a line end), reused when already there."""
    lines, origin = line_pool()
    path = work_dir / f"corpus-{size_mb}MB.txt"
    if path.is_file():
        return path, origin
    rng = random.Random(size_mb)
    variants = []
    for _ in range(VARIANTS):
        rng.shuffle(lines)
        variants.append("".join(lines).encode("utf-8"))
    target = size_mb * MB
    part = path.with_suffix(".part")  # renamed when complete: a killed run is never reused
    written = 0
    with open(part, "wb") as f:
        while written < target:
            block = rng.choice(variants)
            if written + len(block) > target:
                block = block[:block.rfind(b"\n", 0, target - written) + 1]
                if not block:
                    break
            f.write(block)
            written += len(block)
    part.rename(path)
    return path, origin


# ---- the measurements, each run in a fresh process --------------------------------------------
def child_throughput(corpus: str, small: str, work: str) -> dict:
    from charrnn.corpus import Normalization, iter_text, resolve_sources, total_bytes
    from charrnn.idcache import encode_cached
    from charrnn.vocab import Vocab

    after_import = rss_mb()
    result = {}
    for label, path, norm in (("default", corpus, Normalization()),
                              ("lf_nfc", small, Normalization(newline="lf", unicode="nfc"))):
        sources = resolve_sources(path)
        size = total_bytes(sources)
        wall, cpu = time.perf_counter(), time.process_time()
        vocab = Vocab.build(iter_text(sources, norm), norm)
        result[f"vocab_{label}"] = [size, time.perf_counter() - wall, time.process_time() - cpu]
        if label != "default":
            continue
        cache = Path(work) / "throughput-cache"
        shutil.rmtree(cache, ignore_errors=True)
        wall, cpu = time.perf_counter(), time.process_time()
        encoded = encode_cached(sources, vocab, "", cache)  # written, fsynced, memory-mapped
        result["encode"] = [size, time.perf_counter() - wall, time.process_time() - cpu]
        result.update(chars=len(encoded.ids), vocab_size=vocab.size, dtype=vocab.dtype.name)
        del encoded
        shutil.rmtree(cache, ignore_errors=True)
    result.update(after_import_mb=after_import, peak_mb=peak_rss_mb())
    return result


def train_overrides(corpus: str, run_dir: str) -> list[str]:
    values = {"data.path": corpus, "data.val_fraction": VAL_FRACTION,
              "data.batch_size": BATCH_SIZE, "data.seq_len": SEQ_LEN,
              **{f"model.{k}": v for k, v in MODEL.items()},
              "train.max_steps": STEPS, "train.eval_every": 0, "train.eval_chars": 10_000,
              "train.log_every": STEPS, "train.out_dir": run_dir, "train.device": "cpu",
              "train.precision": "fp32", "train.threads": 1}
    return [f"{k}={v}" for k, v in values.items()]


def child_train(corpus: str, run_dir: str) -> dict:
    import torch

    from charrnn.config import load_config
    from charrnn.data import load_dataset
    from charrnn.model import CharRNN, ModelArgs
    from charrnn.train import train

    torch.set_num_threads(1)
    cfg = load_config(None, train_overrides(corpus, run_dir))
    # Baseline: torch plus the same model and optimizer after one step, and no corpus at all.
    model = CharRNN(ModelArgs(vocab_size=256, **MODEL))
    optimizer = torch.optim.AdamW(model.parameters())
    x = torch.randint(0, 256, (BATCH_SIZE, SEQ_LEN))
    _, loss, _ = model(x, x)
    loss.backward()
    optimizer.step()
    baseline = rss_mb()
    del model, optimizer, x, loss

    run = Path(run_dir)
    shutil.rmtree(run, ignore_errors=True)  # a cold start: vocabulary and ids built here
    start = time.perf_counter()
    data = load_dataset(cfg.data, run, warn=lambda message: None)
    prepare_s = time.perf_counter() - start
    sizes = {"train_chars": len(data.train), "val_chars": len(data.val),
             "vocab_size": data.vocab.size, "dtype": data.vocab.dtype.name}
    del data
    prepare_peak = peak_rss_mb()
    start = time.perf_counter()
    result = train(cfg, overwrite=True)
    total_s = time.perf_counter() - start
    return {**sizes, "baseline_mb": baseline, "prepare_peak_mb": prepare_peak,
            "peak_mb": peak_rss_mb(), "prepare_s": prepare_s, "train_s": total_s,
            "steps_s": result.elapsed, "final_chars": result.final.chars}


def child_first_batch(corpus: str, run_dir: str, started: float) -> dict:
    imports = time.perf_counter()
    import torch  # noqa: F401 - timed: every real run pays for it

    from charrnn.batches import make_batches
    from charrnn.config import load_config
    from charrnn.data import load_dataset
    from charrnn.idcache import IDS_FILE

    imported = time.perf_counter()
    ids = Path(run_dir) / IDS_FILE
    stamp = ids.stat().st_mtime_ns
    cfg = load_config(None, train_overrides(corpus, run_dir))
    start = time.perf_counter()
    data = load_dataset(cfg.data, Path(run_dir), warn=lambda message: None)
    batches = make_batches(cfg.data, data.train, seed=cfg.train.seed)
    x, y, _ = batches.next()
    first_batch_s = time.perf_counter() - start
    assert x.shape == (BATCH_SIZE, SEQ_LEN)
    return {"first_batch_s": first_batch_s, "import_s": imported - imports,
            "since_start_s": time.time() - started, "cache_hit": ids.stat().st_mtime_ns == stamp,
            "peak_mb": peak_rss_mb()}


CHILDREN = {"throughput": child_throughput, "train": child_train,
            "first-batch": child_first_batch}


def run_child(mode: str, *args: object) -> dict:
    command = [sys.executable, __file__, "--child", mode, *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        sys.exit(f"{mode} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- report ---------------------------------------------------------------------------------
def rate(entry: list) -> str:
    size, wall, cpu = entry
    return f"{size / MB / wall:,.0f} MB/s ({size / MB:,.0f} MB in {wall:.1f} s, {cpu:.1f} s CPU)"


def verdict(ok: bool) -> str:
    return "yes" if ok else "**no**"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 MB and 100 MB corpora")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/charrnn-bench"),
                        help="where corpora and run directories go (not the repository)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, *rest = args.child
        if mode == "first-batch":
            rest[-1] = float(rest[-1])
        print(json.dumps(CHILDREN[mode](*rest)))
        return

    small_mb, large_mb = (10, 100) if args.quick else (100, 2000)
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"generating corpora in {work} ...", file=sys.stderr)
    small, origin = make_corpus(work, small_mb)
    large, _ = make_corpus(work, large_mb)
    print("vocab and encode throughput ...", file=sys.stderr)
    tput = run_child("throughput", large, small, work)
    runs = {}
    for size_mb, corpus in ((small_mb, small), (large_mb, large)):
        print(f"training on {size_mb:,} MB ...", file=sys.stderr)
        runs[size_mb] = run_child("train", corpus, work / f"run-{size_mb}MB")
    print("first batch from the cache ...", file=sys.stderr)
    first = run_child("first-batch", large, work / f"run-{large_mb}MB", time.time())

    import numpy
    import torch

    print(f"\n## Data pipeline ({'quick' if args.quick else 'full'}), "
          f"{time.strftime('%Y-%m-%d')}\n")
    print(f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), Python "
          f"{platform.python_version()}, numpy {numpy.__version__}, torch {torch.__version__}. "
          f"Corpora: lines of {origin} shuffled, {NON_ASCII_SHARE:.0%} non-ASCII lines; "
          f"vocabulary {tput['vocab_size']} ids ({tput['dtype']}). Command: "
          f"`python bench/bench_data.py{' --quick' if args.quick else ''}`.\n")

    print("| throughput (one process, single-threaded) | result | target | met |")
    print("| --- | --- | --- | --- |")
    vocab_rate = tput["vocab_default"][0] / tput["vocab_default"][1] / MB
    encode_rate = tput["encode"][0] / tput["encode"][1] / MB
    print(f"| vocab build, {large_mb:,} MB | {rate(tput['vocab_default'])} | >= 50 MB/s | "
          f"{verdict(vocab_rate >= 50)} |")
    print(f"| encode to ids.bin (written + fsynced), {large_mb:,} MB | {rate(tput['encode'])} "
          f"| >= 50 MB/s | {verdict(encode_rate >= 50)} |")
    print(f"| vocab build with newline=lf, unicode=nfc, {small_mb:,} MB | "
          f"{rate(tput['vocab_lf_nfc'])} | - | - |")
    print(f"| peak RSS of that process | {tput['peak_mb']:,.0f} MB "
          f"({tput['peak_mb'] - tput['after_import_mb']:,.0f} MB beyond the imports) | - | - |")

    print(f"\n| training, {STEPS} steps of a tiny LSTM ({BATCH_SIZE}x{SEQ_LEN}), cold cache | "
          f"{small_mb:,} MB | {large_mb:,} MB |")
    print("| --- | --- | --- |")
    rows = [
        ("characters: train / val", lambda r: f"{r['train_chars']:,} / {r['val_chars']:,}"),
        ("baseline RSS: torch + model + optimizer", lambda r: f"{r['baseline_mb']:,.0f} MB"),
        ("peak RSS after vocab + encode", lambda r: f"{r['prepare_peak_mb']:,.0f} MB"),
        ("peak RSS at the end", lambda r: f"{r['peak_mb']:,.0f} MB"),
        ("**peak beyond the baseline** (target < 1,000 MB)",
         lambda r: f"**{r['peak_mb'] - r['baseline_mb']:,.0f} MB**"),
        ("vocab + encode", lambda r: f"{r['prepare_s']:.1f} s"),
        ("training steps", lambda r: f"{r['steps_s']:.1f} s"),
        ("final evaluation (all of val) + set-up",
         lambda r: f"{r['train_s'] - r['steps_s']:.1f} s for {r['final_chars']:,} chars"),
    ]
    for label, cell in rows:
        print(f"| {label} | {cell(runs[small_mb])} | {cell(runs[large_mb])} |")
    extra = {k: r["peak_mb"] - r["baseline_mb"] for k, r in runs.items()}
    flat = extra[large_mb] - extra[small_mb]
    print(f"\nExtra memory, {large_mb:,} MB minus {small_mb:,} MB corpus: {flat:+,.0f} MB "
          f"(target: under 1,000 MB and flat: {verdict(max(extra.values()) < 1000)}).")

    print(f"\n| first batch, cached {large_mb:,} MB corpus (fresh process) | result | target "
          "| met |")
    print("| --- | --- | --- | --- |")
    print(f"| prepare (cache hit: {first['cache_hit']}) + batcher + first batch | "
          f"{first['first_batch_s']:.2f} s | < 2 s | {verdict(first['first_batch_s'] < 2)} |")
    print(f"| import torch and charrnn first | {first['import_s']:.2f} s | - | - |")
    print(f"| process start to first batch | {first['since_start_s']:.2f} s | - | - |")
    print(f"\nbenchmark wall time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
