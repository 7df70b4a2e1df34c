"""The character model: Embedding -> RNN/LSTM/GRU -> Linear.

This module imports only torch, and the config's model shape for its fields and defaults
(a plain dataclass: the model knows nothing of files or YAML). The recurrent state is an
opaque value (a tensor for RNN and GRU, an `(h, c)` tuple for LSTM) that callers pass back
in; `map_state` applies a function to whatever it holds, so no caller special-cases LSTM.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from charrnn.config import ModelShape

CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
# The same cells as single fused steps: one call per layer per generated character.
_CELL_STEPS = {"rnn": torch.rnn_tanh_cell, "lstm": torch.lstm_cell, "gru": torch.gru_cell}

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

    def stepper(self) -> Stepper:
        """A one-character-per-stream step with weights prepared for generation (eval mode).

        Rebuild it after the weights change: it holds tables computed from them.
        """
        return Stepper(self)


class Stepper:
    """The model run one character per stream: idx (B,) and a state -> logits (B, V), state.

    Generation steps one character at a time, where per-call overhead and reading the weights
    dominate (not arithmetic). So the first layer's input projection of every character is
    precomputed into a table (an embedding followed by a matrix is a lookup, biases included),
    and on the CPU each layer is two matrix products on weights stored the way they are read
    (x @ W, not x @ W.T) followed by the gate arithmetic. That was measured faster than the
    fused cell calls on the Zen 3 of BENCHMARKS.md (the only CPU it has been timed on so far):
    about half the time at 64 streams, where the cells'
    transposed products run at a fraction of the matmul peak, and a third less per call for
    one stream, where their fixed cost per call dominates. On accelerators the fused cells
    (one kernel for the gate arithmetic) are kept.
    """

    # Beyond this size (V x gates x H floats) the table costs more memory than it saves time.
    MAX_TABLE_BYTES = 64 << 20

    @torch.no_grad()
    def __init__(self, model: CharRNN, fused: bool | None = None):
        """`fused`: one fused cell call per layer (default: on accelerators only)."""
        args, rnn = model.args, model.rnn
        self.args = args
        self.lstm = args.cell == "lstm"
        self.fused = model.embedding.weight.device.type != "cpu" if fused is None else fused
        self.embedding = model.embedding.weight.detach()
        self.head = (model.head.weight.detach(), model.head.bias.detach())
        weights = [tuple(getattr(rnn, f"{name}_l{layer}").detach()
                         for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
                   for layer in range(args.num_layers)]
        # GRU's candidate gate multiplies W_hn h + b_hn by the reset gate: its hidden bias
        # cannot join the input bias there, so GRU keeps the two apart.
        self.joint_bias = args.cell != "gru"
        if not self.fused and self.lstm:
            weights = [_doubled_cell_gate(*w) for w in weights]
        self.layers = weights if self.fused else [self._read_layout(*w) for w in weights]
        w_ih, _, b_ih, b_hh = weights[0]
        self.table = None
        if self.embedding.shape[0] * w_ih.shape[0] * self.embedding.element_size() \
                <= self.MAX_TABLE_BYTES:
            bias = b_ih + b_hh if self.joint_bias and not self.fused else b_ih
            self.table = F.linear(self.embedding, w_ih, bias)  # (V, gates*H)
        if self.fused:
            self.cell = _CELL_STEPS[args.cell]
            # A fused cell whose input is empty computes input @ W_ih + b_ih as just b_ih.
            self.no_input = self.embedding.new_empty(1, 0)
            self.no_weight = w_ih.new_empty(w_ih.shape[0], 0)

    def _read_layout(self, w_ih, w_hh, b_ih, b_hh) -> tuple:
        """(W_ih^T, W_hh^T, input bias, hidden bias), contiguous for x @ W."""
        if self.joint_bias:
            b_ih, b_hh = b_ih + b_hh, None
        return w_ih.t().contiguous(), w_hh.t().contiguous(), b_ih, b_hh

    def initial_state(self, batch_size: int, device: torch.device | str) -> State:
        shape = (self.args.num_layers, batch_size, self.args.hidden_size)
        zeros = torch.zeros(shape, device=device)
        return (zeros, zeros.clone()) if self.lstm else zeros

    # No torch.no_grad() here (it costs as much as a small operation per call): every weight
    # is detached, so nothing records a graph unless a caller passes a state that wants one.
    def __call__(self, idx: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        if state is None:
            state = self.initial_state(idx.shape[0], idx.device)
        step = self._fused_layer if self.fused else self._layer
        hs = state[0].unbind() if self.lstm else state.unbind()
        cs = state[1].unbind() if self.lstm else hs
        new_h, new_c = [], []
        x = None
        for layer in range(self.args.num_layers):
            hx = (hs[layer], cs[layer]) if self.lstm else hs[layer]
            out = step(layer, idx if layer == 0 else None, x, hx)
            if self.lstm:
                x, c = out
                new_c.append(c)
            else:
                x = out
            new_h.append(x)  # (B, H); no dropout: generation runs in eval mode
        logits = F.linear(x, *self.head)  # (B, V)
        next_state = (torch.stack(new_h), torch.stack(new_c)) if self.lstm else torch.stack(new_h)
        return logits, next_state

    def _layer(self, layer: int, idx: torch.Tensor | None, x: torch.Tensor | None, hx: State):
        """One layer's step as matrix products and gate arithmetic (the CPU path)."""
        w_ih, w_hh, b_ih, b_hh = self.layers[layer]
        h = hx[0] if self.lstm else hx
        if idx is not None and self.table is not None:
            projected = F.embedding(idx, self.table)  # (B, gates*H): W_ih x + biases
        else:
            if idx is not None:
                x = F.embedding(idx, self.embedding)
            projected = torch.addmm(b_ih, x, w_ih)
        cell = self.args.cell
        if cell == "gru":
            hidden = torch.addmm(b_hh, h, w_hh)
            size = h.shape[1]
            reset, update = (projected[:, :2 * size] + hidden[:, :2 * size]).sigmoid_().chunk(2, 1)
            candidate = torch.addcmul(projected[:, 2 * size:], reset, hidden[:, 2 * size:]).tanh_()
            return torch.lerp(candidate, h, update)  # (1 - z) n + z h
        gates = projected.addmm(h, w_hh)
        if cell == "rnn":
            return gates.tanh_()
        # The cell gate's weights are doubled (`_doubled_cell_gate`), so one sigmoid serves all
        # four gates: tanh(g) = 2 sigmoid(2g) - 1, and sigmoid is several times cheaper.
        i, f, doubled_g, o = gates.sigmoid_().chunk(4, 1)
        kept = torch.mul(f, hx[1]).sub_(i)  # f c - i ...
        c = kept.addcmul_(i, doubled_g, value=2.0)  # ... + 2 i sigmoid(2g) = f c + i tanh(g)
        return o * c.tanh(), c

    def _fused_layer(self, layer: int, idx: torch.Tensor | None, x: torch.Tensor | None,
                     hx: State):
        """One layer's step as one fused cell call (accelerators)."""
        w_ih, w_hh, b_ih, b_hh = self.layers[layer]
        if idx is None:
            return self.cell(x, hx, w_ih, w_hh, b_ih, b_hh)
        if self.table is not None and idx.shape[0] == 1:
            projected = self.table[idx[0]]  # (gates*H,): this character's W_ih x + b_ih
            return self.cell(self.no_input, hx, self.no_weight, w_hh, projected, b_hh)
        return self.cell(F.embedding(idx, self.embedding), hx, w_ih, w_hh, b_ih, b_hh)


def _doubled_cell_gate(w_ih, w_hh, b_ih, b_hh) -> tuple:
    """An LSTM layer's weights with the cell gate's (the third quarter's) rows times two."""
    def doubled(weight: torch.Tensor) -> torch.Tensor:
        out = weight.clone()
        size = out.shape[0] // 4
        out[2 * size:3 * size] *= 2
        return out

    return doubled(w_ih), doubled(w_hh), doubled(b_ih), doubled(b_hh)
