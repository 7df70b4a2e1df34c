"""A character transformer with nanoGPT's architecture, for the side-by-side benchmark.

Written from the published architecture (pre-LayerNorm blocks, causal self-attention, a 4x GELU
MLP, learned positions, output weights tied to the token embedding, no biases) and trained the
way nanoGPT's documented CPU recipe for shakespeare_char does: n_layer=4 n_head=4 n_embd=128
block_size=64 batch_size=12 max_iters=2000, AdamW lr 1e-3 (betas 0.9/0.99, weight decay 0.1 on
matrices), 100 warmup iterations then cosine decay to 1e-4, gradient clipping at 1.0, dropout 0,
fp32 on CPU.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128


class Block(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(c.n_embd, bias=False)
        self.qkv = nn.Linear(c.n_embd, 3 * c.n_embd, bias=False)
        self.proj = nn.Linear(c.n_embd, c.n_embd, bias=False)
        self.ln2 = nn.LayerNorm(c.n_embd, bias=False)
        self.fc = nn.Linear(c.n_embd, 4 * c.n_embd, bias=False)
        self.out = nn.Linear(4 * c.n_embd, c.n_embd, bias=False)
        self.n_head = c.n_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class BabyGPT(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.config = c
        self.tok = nn.Embedding(c.vocab_size, c.n_embd)
        self.pos = nn.Embedding(c.block_size, c.n_embd)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd, bias=False)
        self.head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.head.weight = self.tok.weight  # weight tying, as nanoGPT
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith(("proj.weight", "out.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layer))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))  # (B, T, V)


def train_recipe(train_ids: np.ndarray, vocab_size: int, *, max_iters: int = 2000,
                 max_seconds: float | None = None, seed: int = 1337) -> tuple[BabyGPT, int, float]:
    """Train with the documented CPU recipe; returns the model, iterations done and seconds."""
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size)
    model = BabyGPT(config)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                   {"params": other, "weight_decay": 0.0}],
                                  lr=1e-3, betas=(0.9, 0.99))
    data = torch.from_numpy(train_ids.astype(np.int64))
    batch, block = 12, config.block_size
    start = time.perf_counter()
    it = 0
    for it in range(max_iters):
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
        for group in optimizer.param_groups:
            group["lr"] = _recipe_lr(it, max_iters)
        ix = torch.randint(len(data) - block, (batch,))
        x = torch.stack([data[i:i + block] for i in ix])
        y = torch.stack([data[i + 1:i + 1 + block] for i in ix])
        logits = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    else:
        it = max_iters
    return model, it, time.perf_counter() - start


def _recipe_lr(it: int, max_iters: int, warmup: int = 100, peak: float = 1e-3,
               minimum: float = 1e-4) -> float:
    if it < warmup:
        return peak * (it + 1) / (warmup + 1)
    ratio = (it - warmup) / (max_iters - warmup)
    return minimum + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (peak - minimum)


@torch.no_grad()
def score_windows(model: BabyGPT, ids: np.ndarray, batch: int = 256) -> float:
    """Mean nats/char with each character predicted from its window's 0..63 earlier ones."""
    model.eval()
    block = model.config.block_size
    data = torch.from_numpy(ids.astype(np.int64))
    targets = len(data) - 1
    total, count = 0.0, 0
    starts = list(range(0, targets, block))
    for i in range(0, len(starts), batch):
        rows = [data[s:s + block + 1] for s in starts[i:i + batch]]
        for row in rows:  # the last window may be short: score it on its own
            if len(row) < block + 1:
                logits = model(row[None, :-1])
                total += F.cross_entropy(logits[0], row[1:], reduction="sum").item()
                count += len(row) - 1
        full = [r for r in rows if len(r) == block + 1]
        if full:
            stacked = torch.stack(full)
            logits = model(stacked[:, :-1])
            total += F.cross_entropy(logits.flatten(0, 1), stacked[:, 1:].flatten(),
                                     reduction="sum").item()
            count += stacked[:, 1:].numel()
    return total / count
