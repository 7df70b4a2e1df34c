"""Sampling speed: charrnn's sampler against the two classic ways of generating text.

- re-read: feed the last 100 characters through the model for every new character (the Keras
  text-generation example and nanoGPT's sample.py work this way);
- nn.LSTM per char: carry the state but call the full recurrent module once per character.
charrnn carries the state and runs each layer as one fused cell step. All use a 2x256 LSTM.

    python bench/sampling.py [--length 2000] [--device auto]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, matmul_flops, rnn_flops_per_char, sync, table  # noqa: E402

from charrnn import checkpoint  # noqa: E402
from charrnn.devices import pick_device  # noqa: E402
from charrnn.model import CharRNN, ModelArgs  # noqa: E402
from charrnn.sample import Sampler, SampleSettings  # noqa: E402
from charrnn.vocab import Vocab  # noqa: E402

HIDDEN, LAYERS, EMBEDDING = 256, 2, 64
CONTEXT = 100  # characters re-read per new character by the classic samplers


def best_of(runs: int, measure) -> float:
    """The fastest of several runs: the least disturbed by whatever else the machine does."""
    return max(measure() for _ in range(runs))


def charrnn_speed(sampler: Sampler, streams: int, length: int) -> float:
    settings = SampleSettings(length=length, temperature=1.0, num_samples=streams, seed=0)
    sampler.sample_text(SampleSettings(length=200, num_samples=streams, seed=0))  # warm-up

    def once() -> float:
        sync(sampler.device)
        start = time.perf_counter()
        sampler.sample_text(settings)
        sync(sampler.device)
        return streams * length / (time.perf_counter() - start)

    return best_of(3, once)


@torch.inference_mode()
def reread_speed(model: CharRNN, vocab_size: int, streams: int, length: int, device) -> float:
    generator = torch.Generator(device=device).manual_seed(0)
    text = torch.randint(1, vocab_size, (streams, CONTEXT), device=device)
    start = time.perf_counter()
    for _ in range(length):
        logits, _, _ = model(text[:, -CONTEXT:])  # the whole context, from a zero state
        nxt = torch.multinomial(torch.softmax(logits[:, -1], -1), 1, generator=generator)
        text = torch.cat([text[:, 1:], nxt], dim=1)
    sync(device)
    return streams * length / (time.perf_counter() - start)


@torch.inference_mode()
def module_per_char_speed(model: CharRNN, streams: int, length: int, device) -> float:
    generator = torch.Generator(device=device).manual_seed(0)
    nxt = torch.ones(streams, 1, dtype=torch.long, device=device)
    state = None
    start = time.perf_counter()
    for _ in range(length):
        logits, _, state = model(nxt, state=state)  # nn.LSTM called for one character
        nxt = torch.multinomial(torch.softmax(logits[:, -1], -1), 1, generator=generator)
    sync(device)
    return streams * length / (time.perf_counter() - start)


def best_wall_time(command: list[str], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - start)
    return best


def cli_wall_time(checkpoint_path: Path, repeats: int = 5) -> tuple[float, float]:
    """Best wall times of `charrnn sample --num-samples 10 --length 500` (start-up included)
    and of a bare `python -c "import torch"`, measured alternately."""
    command = [sys.executable, "-m", "charrnn", "sample", "--checkpoint", str(checkpoint_path),
               "--num-samples", "10", "--length", "500", "--seed", "1"]
    bare = [sys.executable, "-c", "import torch"]
    sample_s = torch_s = float("inf")
    for _ in range(repeats):
        torch_s = min(torch_s, best_wall_time(bare, 1))
        sample_s = min(sample_s, best_wall_time(command, 1))
    return sample_s, torch_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=2000, help="characters per stream")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = pick_device(args.device)
    torch.manual_seed(0)
    vocab = Vocab.build(["".join(chr(c) for c in range(32, 97)) + "\n"])  # 66 ids, as Shakespeare
    shape = ModelArgs(vocab_size=vocab.size, cell="lstm", embedding_dim=EMBEDDING,
                      hidden_size=HIDDEN, num_layers=LAYERS, dropout=0.0)
    model = CharRNN(shape).to(device).eval()
    sampler = Sampler(model, vocab, device)
    flops = rnn_flops_per_char("lstm", EMBEDDING, HIDDEN, LAYERS, training=False)
    peak = matmul_flops(torch.float32, device)
    print(f"machine: {machine()}")
    print(f"2x{HIDDEN} LSTM, fp32; matmul peak {peak / 1e9:,.0f} GFLOP/s")
    rows = []
    for streams in (1, 64):
        ours = charrnn_speed(sampler, streams, args.length)
        reread = best_of(3, partial(reread_speed, model, vocab.size, streams,
                                    max(args.length // 10, 50), device))
        per_char = best_of(3, partial(module_per_char_speed, model, streams,
                                      max(args.length // 4, 100), device))
        rows.append([str(streams), f"{reread:,.0f}", f"{per_char:,.0f}", f"{ours:,.0f}",
                     f"{ours / reread:,.1f}x", f"{ours / per_char:,.1f}x",
                     f"{100 * ours * flops / peak:.0f}%"])
        print(rows[-1], flush=True)
    print()
    print(table(rows, ["streams", "re-read 100 chars/s", "nn.LSTM per char chars/s",
                       "charrnn chars/s", "vs re-read", "vs nn.LSTM per char",
                       "charrnn MFU (fp32)"]))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        payload = checkpoint.build_payload(model.cpu(), vocab, step=0, val_loss=None,
                                           best_val_loss=None, elapsed=0.0, config={})
        checkpoint.save(payload, path)
        wall, bare = cli_wall_time(path)
    print(f"\ncharrnn sample --num-samples 10 --length 500: {wall:.2f} s wall, start-up included;"
          f" python -c 'import torch': {bare:.2f} s; ratio {wall / bare:.2f} (best of 5 each)")


if __name__ == "__main__":
    main()
