"""Training throughput: charrnn's training step against a naive loop, side by side.

The naive loop is how the classic blog code trains a char-RNN: a Dataset that encodes each
window in Python, DataLoader(shuffle=True), a fresh zero hidden state every batch, fp32. Both
train the same CharRNN with the same batch. FLOP utilisation is achieved FLOP/s over the FLOP/s
of a large matmul in the same dtype, measured in the same run.

    python bench/throughput.py [--seconds 6] [--device auto]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, matmul_flops, rnn_flops_per_char, shakespeare, sync, table  # noqa: E402

from charrnn.config import load_config  # noqa: E402
from charrnn.devices import pick_device  # noqa: E402
from charrnn.distributed import World  # noqa: E402
from charrnn.metrics import SilentView  # noqa: E402
from charrnn.model import CharRNN, ModelArgs  # noqa: E402
from charrnn.rundir import RunDir  # noqa: E402
from charrnn.speed import precisions_to_try  # noqa: E402
from charrnn.train import Trainer  # noqa: E402

SIZES = [("lstm", 128, 2), ("lstm", 256, 2), ("lstm", 512, 3), ("gru", 256, 2), ("rnn", 256, 2)]
EMBEDDING, BATCH, SEQ = 64, 64, 128


class NaiveWindows(Dataset):
    """Encodes every window character by character, as the classic examples do."""

    def __init__(self, text: str, seq_len: int, stoi: dict[str, int]):
        self.text, self.seq_len, self.stoi = text, seq_len, stoi

    def __len__(self) -> int:
        return len(self.text) - self.seq_len - 1

    def __getitem__(self, i: int):
        chunk = self.text[i:i + self.seq_len + 1]
        ids = torch.tensor([self.stoi[c] for c in chunk], dtype=torch.long)
        return ids[:-1], ids[1:]


def naive_speed(cell: str, hidden: int, layers: int, text: str, stoi: dict, device,
                seconds: float) -> float:
    torch.manual_seed(0)
    model = CharRNN(ModelArgs(vocab_size=len(stoi) + 1, cell=cell, embedding_dim=EMBEDDING,
                              hidden_size=hidden, num_layers=layers, dropout=0.0)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    loader = DataLoader(NaiveWindows(text, SEQ, stoi), batch_size=BATCH, shuffle=True,
                        drop_last=True)

    def steps():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            _, loss, _ = model(x, y, None)  # a fresh zero state every batch
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            yield

    return _chars_per_second(steps(), device, seconds)


def charrnn_speed(cell: str, hidden: int, layers: int, corpus: Path, device, precision: str,
                  seconds: float) -> float:
    with tempfile.TemporaryDirectory() as run_dir:
        config = load_config(None, [
            f"data.path={corpus}", f"data.batch_size={BATCH}", f"data.seq_len={SEQ}",
            f"model.cell={cell}", f"model.hidden_size={hidden}", f"model.num_layers={layers}",
            f"model.embedding_dim={EMBEDDING}", "model.dropout=0", f"train.device={device}",
            f"train.precision={precision}", f"train.out_dir={run_dir}"])
        world = World(device=pick_device(device))
        trainer = Trainer(config, RunDir(run_dir), world, SilentView())

        def steps():
            while True:
                trainer.train_step()
                yield

        return _chars_per_second(steps(), trainer.device, seconds)


def _chars_per_second(steps, device, seconds: float) -> float:
    for _ in range(3):
        next(steps)
    best = 0.0
    for _ in range(2):  # the faster of two timed spans: the least disturbed one
        sync(device)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 2:
            next(steps)
            count += 1
        sync(device)
        best = max(best, count * BATCH * SEQ / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds per cell")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = pick_device(args.device)
    corpus = shakespeare()
    text = corpus.read_text(encoding="utf-8")
    stoi = {c: i + 1 for i, c in enumerate(sorted(set(text)))}
    # bf16 only where it is not emulated: there a training step takes minutes.
    with_bf16 = "bf16" in precisions_to_try("auto", ModelArgs(vocab_size=len(stoi) + 1), BATCH,
                                            device)
    peak = {"fp32": matmul_flops(torch.float32, device),
            "bf16": matmul_flops(torch.bfloat16, device) if with_bf16 else float("nan")}
    print(f"machine: {machine()}")
    print(f"best large matmul: fp32 {peak['fp32'] / 1e9:,.0f} GFLOP/s, "
          f"bf16 {peak['bf16'] / 1e9:,.0f} GFLOP/s; batch {BATCH} x {SEQ} chars")
    rows = []
    for cell, hidden, layers in SIZES:
        flops = rnn_flops_per_char(cell, EMBEDDING, hidden, layers)
        naive = naive_speed(cell, hidden, layers, text, stoi, device, args.seconds)
        ours32 = charrnn_speed(cell, hidden, layers, corpus, device, "fp32", args.seconds)
        ours16 = (charrnn_speed(cell, hidden, layers, corpus, device, "bf16", args.seconds)
                  if with_bf16 else float("nan"))
        rows.append([f"{cell} {layers}x{hidden}", f"{naive:,.0f}", f"{ours32:,.0f}",
                     f"{ours16:,.0f}", f"{ours32 / naive:.2f}x", f"{ours16 / naive:.2f}x",
                     f"{100 * naive * flops / peak['fp32']:.0f}%",
                     f"{100 * ours32 * flops / peak['fp32']:.0f}%",
                     f"{100 * ours16 * flops / peak['bf16']:.0f}%"])
        print(rows[-1], flush=True)
    print()
    print(table(rows, ["model", "naive chars/s", "charrnn fp32 chars/s",
                       "charrnn bf16 chars/s", "fp32 vs naive", "bf16 vs naive",
                       "naive MFU (fp32)", "charrnn MFU (fp32)", "charrnn MFU (bf16)"]))


if __name__ == "__main__":
    main()
