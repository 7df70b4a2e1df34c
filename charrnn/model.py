"""The character model: Embedding -> RNN/LSTM/GRU -> Linear.

This module imports only torch, and the config's model shape for its fields and defaults
(a plain dataclass: the model knows nothing of files or YAML). The recurrent state is an
opaque value (a tensor for RNN and GRU, an `(h, c)` tuple for LSTM) that callers pass back
in; `map_state` applies a function to whatever it holds, so no caller special-cases LSTM.
Generation's one-character-per-stream step is `stepper.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from charrnn.config import ModelShape

CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class ModelArgs(ModelShape):
    """The config's model shape (cell, embedding_dim, hidden_size, num_layers, dropout, with
    their defaults) plus what the data decides: the vocabulary size."""

    vocab_size: int  # ids, <unk> included

    def to_dict(self) -> dict:
        return asdict(self)


def map_state(fn: Callable[[torch.Tensor], torch.Tensor], state: State) -> State:
    """Apply `fn` to every tensor of a recurrent state (detach, move, slice, clone...)."""
    if isinstance(state, tuple):
        return tuple(fn(s) for s in state)
    return fn(state)


def join_streams(states: list[State]) -> State:
    """One state from the states of consecutive groups of streams, joined along the batch.

    (L, B_i, H) parts become (L, sum B_i, H): under torchrun each process carries its own
    streams, and a checkpoint holds them in stream order, as one process training all would.
    """
    if isinstance(states[0], tuple):
        return tuple(torch.cat(parts, dim=1) for parts in zip(*states, strict=True))
    return torch.cat(states, dim=1)


def byte_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout with masks cut from random bytes, p rounded to a multiple of 1/256.

    On CPU, drawing a float per element (bernoulli_) cost 15% of a training step; one 64-bit
    draw gives eight mask bytes, about ten times cheaper. The kept values are scaled by the
    exact keep rate, so the expected activation is unchanged.
    """
    cutoff = round(p * 256)  # bytes below it are dropped
    if cutoff == 0:
        return x
    words = torch.empty((x.numel() + 7) // 8, dtype=torch.int64, device=x.device)
    words.random_(-(2**63), None)  # the full 64-bit range: eight uniform bytes each
    keep = words.view(torch.uint8)[:x.numel()].view(x.shape) >= cutoff
    return x * keep / (1.0 - cutoff / 256)


class CharRNN(nn.Module):
    """Embedding -> RNN/LSTM/GRU -> Linear over the vocabulary. `forward(idx, targets, state)`
    returns (logits, loss or None, the state after idx); `ModelArgs` gives its shape."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        if args.cell not in CELLS:
            raise ValueError(f"unknown cell {args.cell!r}; choose one of {', '.join(CELLS)}")
        self.args = args
        self.embedding = nn.Embedding(args.vocab_size, args.embedding_dim)
        self.rnn = CELLS[args.cell](
            args.embedding_dim, args.hidden_size, args.num_layers, batch_first=True,
            dropout=args.dropout if args.num_layers > 1 else 0.0)
        self.head = nn.Linear(args.hidden_size, args.vocab_size)
        if args.cell == "lstm":
            self._open_forget_gates()

    def _open_forget_gates(self) -> None:
        # A forget-gate bias of 1 lets gradients flow through long spans from the first step
        # (Jozefowicz et al. 2015); PyTorch's gate order is input, forget, cell, output.
        hidden = self.args.hidden_size
        with torch.no_grad():
            for layer in range(self.args.num_layers):
                getattr(self.rnn, f"bias_ih_l{layer}")[hidden:2 * hidden].fill_(1.0)
                getattr(self.rnn, f"bias_hh_l{layer}")[hidden:2 * hidden].zero_()

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.args.dropout == 0.0:
            return x
        if x.device.type == "cpu":
            return byte_dropout(x, self.args.dropout)
        return F.dropout(x, self.args.dropout, training=True)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        shape = (self.args.num_layers, batch_size, self.args.hidden_size)
        device = device or self.head.weight.device
        zeros = torch.zeros(shape, device=device)
        return (zeros, zeros.clone()) if self.args.cell == "lstm" else zeros

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                state: State | None = None) -> tuple[torch.Tensor, torch.Tensor | None, State]:
        """idx (B, T) -> logits (B, T, V), mean cross-entropy in nats (if targets), new state.

        Unlike a transformer's `forward(idx, targets)`, a recurrent model also takes and returns
        the state, so consecutive windows of one stream continue where the last one stopped.
        """
        x = self._drop(self.embedding(idx))  # (B, T, E)
        out, state = self.rnn(x, state)  # (B, T, H)
        logits = self.head(self._drop(out))  # (B, T, V)
        loss = None
        if targets is not None:
            # Loss in fp32 even under bf16 autocast: log-softmax of low-precision logits is noisy.
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        return logits, loss, state
