"""Generation's step: the model run one character per stream, its state carried between calls.

Generating steps one character at a time, where the cost per call and reading the weights
dominate, not arithmetic. Every stepper has the same contract:

    carry = stepper.from_state(state)         # the model's state after reading a prime
    logits, carry = stepper(idx, carry)       # idx (B,) -> logits (B, V), the next carry

The carry is a tuple of tensors with the streams on dimension 1, like the model's own state,
so `map_state` selects and `join_streams` joins rows of either without knowing which it holds.

- `BlockStepper` (CPUs) stores each layer's weights as one stack of square blocks, one per
  gate, and carries each layer's recurrent product W_hh h + b_hh instead of h. One batched
  product per layer then gives both that layer's product for the next step and the next
  layer's input for this one (both read the same h), so a 2-layer LSTM makes two products
  per character (plus the output layer's) instead of four, and the blocks are computed
  in parallel even for one stream, which a single matrix-vector product is not on CPUs
  (BENCHMARKS.md has the timings). The first layer's input projection of each character is
  precomputed as a table: an embedding followed by a matrix is a lookup.
- `CellStepper` (accelerators) calls the fused cell kernels, one per layer, on the model's
  own (h, c) state: one kernel launch per layer beats several small ones there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from charrnn.model import CharRNN, State

# Gates per cell: LSTM (input, forget, cell, output), GRU (reset, update, new), RNN (one).
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
# The same cells as single fused steps: one call per layer per generated character.
_CELL_STEPS = {"rnn": torch.rnn_tanh_cell, "lstm": torch.lstm_cell, "gru": torch.gru_cell}
# Beyond this size (V x gates x H values) the first layer's table costs more memory than it
# saves time, and characters are embedded and projected at every step instead.
MAX_TABLE_BYTES = 64 << 20

Carry = tuple[torch.Tensor, ...] | State


def stepper_for(model: CharRNN, fused: bool | None = None) -> Stepper:
    """The generation step for `model`'s current weights (eval mode; rebuild after they change).

    `fused`: the fused cell kernels (default: on accelerators only)."""
    if fused is None:
        fused = model.head.weight.device.type != "cpu"
    return CellStepper(model) if fused else BlockStepper(model)


def _layer_weights(model: CharRNN) -> list[tuple[torch.Tensor, ...]]:
    """(W_ih, W_hh, b_ih, b_hh) of every layer, detached: nothing records a graph."""
    rnn = model.rnn
    return [tuple(getattr(rnn, f"{name}_l{layer}").detach()
                  for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            for layer in range(model.args.num_layers)]


class BlockStepper:
    """The CPU step: gate blocks, carried recurrent products, one batched product per layer."""

    def __init__(self, model: CharRNN):
        args = model.args
        self.cell, self.layers = args.cell, args.num_layers
        gates, hidden = GATES[args.cell], args.hidden_size
        self.gates = gates
        weights = _layer_weights(model)
        if args.cell == "lstm":
            weights = [_doubled_cell_gate(*w) for w in weights]
        # The output layer stays a separate product. Folded in as one more block of the last
        # layer (padded to H columns) it saved nothing for one stream and cost 5% at 64: with
        # two threads the fifth block is a third round of the batched product.
        self.head_weight = model.head.weight.detach().t().contiguous()  # (H, V)
        self.head_bias = model.head.bias.detach()
        # Layer l's blocks: W_hh_l's gates, then layer l+1's W_ih gates (none after the last).
        self.blocks, self.biases = [], []
        for layer, (_, w_hh, _, b_hh) in enumerate(weights):
            above = weights[layer + 1] if layer + 1 < len(weights) else None
            self.blocks.append(torch.cat([_blocks(w_hh, gates)]
                                         + ([_blocks(above[0], gates)] if above else [])))
            self.biases.append(torch.cat([b_hh.view(gates, 1, hidden)]
                                         + ([above[2].view(gates, 1, hidden)] if above else [])))
        embedding = model.embedding.weight.detach()
        w_ih, _, b_ih, _ = weights[0]
        self.table = _input_table(embedding, w_ih, b_ih)  # (V, gates*H)
        if self.table is not None:  # as (gates, V, H): one block of rows per gate
            self.table = self.table.view(-1, gates, hidden).transpose(0, 1).contiguous()
        else:
            self.embedding = embedding
            self.input_blocks = _blocks(w_ih, gates)  # (gates, E, H)
            self.input_bias = b_ih.view(gates, 1, hidden)

    def from_state(self, state: State) -> Carry:
        """The carry for a model state (h, c) or h of shape (L, B, H)."""
        h = state[0] if isinstance(state, tuple) else state
        carry = []
        for layer in range(self.layers):
            hidden = h[layer:layer + 1]  # (1, B, H)
            carry.append(self._recurrent(layer, hidden))
            if self.cell == "lstm":
                carry.append(state[1][layer:layer + 1])
            elif self.cell == "gru":
                carry.append(hidden)
        return tuple(carry)

    def initial_state(self, batch_size: int, device: torch.device | str) -> Carry:
        h = torch.zeros(self.layers, batch_size, self.blocks[0].shape[1], device=device,
                        dtype=self.blocks[0].dtype)
        return self.from_state((h, h) if self.cell == "lstm" else h)

    def _recurrent(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """W_hh h + b_hh as (gates, B, H) for hidden (1, B, H)."""
        gates = self.gates
        return torch.baddbmm(self.biases[layer][:gates],
                             hidden.expand(gates, -1, -1), self.blocks[layer][:gates])

    def _first_input(self, idx: torch.Tensor) -> torch.Tensor:
        """The first layer's W_ih x + b_ih for each stream's character: (gates, B, H)."""
        if self.table is not None:
            return self.table.index_select(1, idx)
        x = F.embedding(idx, self.embedding)  # (B, E)
        return torch.baddbmm(self.input_bias, x.expand(self.gates, -1, -1), self.input_blocks)

    # No torch.no_grad() here (it costs as much as a small operation per call): every weight
    # is detached, so nothing records a graph unless a caller passes a carry that wants one.
    def __call__(self, idx: torch.Tensor, carry: Carry | None) -> tuple[torch.Tensor, Carry]:
        if carry is None:
            carry = self.initial_state(idx.shape[0], idx.device)
        per_layer = len(carry) // self.layers
        gates, x, new = self.gates, self._first_input(idx), []
        for layer in range(self.layers):
            recurrent = carry[per_layer * layer]  # (gates, B, H)
            if self.cell == "lstm":
                # The cell gate's weights are doubled (`_doubled_cell_gate`), so one sigmoid
                # serves all four gates: tanh(g) = 2 sigmoid(2g) - 1, several times cheaper.
                i, f, doubled_g, o = x.add_(recurrent).sigmoid_()  # (B, H) each
                c = torch.mul(f, carry[per_layer * layer + 1]).sub_(i)  # f c - i ..., (1, B, H)
                c.addcmul_(i, doubled_g, value=2.0)  # ... + 2 i sigmoid(2g) = f c + i tanh(g)
                h = c.tanh().mul_(o)
                kept = (c,)
            elif self.cell == "gru":
                previous = carry[per_layer * layer + 1]
                reset, update = x[:2].add_(recurrent[:2]).sigmoid_().split(1)
                candidate = torch.addcmul(x[2:], reset, recurrent[2:]).tanh_()
                h = torch.lerp(candidate, previous, update)  # (1 - z) n + z h
                kept = (h,)
            else:
                h = x.add_(recurrent).tanh_()
                kept = ()
            rows = self.blocks[layer].shape[0]
            out = torch.baddbmm(self.biases[layer], h.expand(rows, -1, -1), self.blocks[layer])
            new += [out[:gates], *kept]
            x = out[gates:]  # the next layer's input projection (empty after the last layer)
        logits = torch.addmm(self.head_bias, h[0], self.head_weight)  # (B, V)
        return logits, tuple(new)


class CellStepper:
    """The accelerator step: one fused cell call per layer on the model's own state."""

    def __init__(self, model: CharRNN):
        args = model.args
        self.args, self.lstm = args, args.cell == "lstm"
        self.cell = _CELL_STEPS[args.cell]
        self.layers = _layer_weights(model)
        self.embedding = model.embedding.weight.detach()
        self.head = (model.head.weight.detach(), model.head.bias.detach())
        w_ih, _, b_ih, _ = self.layers[0]
        self.table = _input_table(self.embedding, w_ih, b_ih)  # (V, gates*H)
        # A fused cell whose input is empty computes input @ W_ih + b_ih as just b_ih.
        self.no_input = self.embedding.new_empty(1, 0)
        self.no_weight = w_ih.new_empty(w_ih.shape[0], 0)

    def from_state(self, state: State) -> State:
        return state

    def initial_state(self, batch_size: int, device: torch.device | str) -> State:
        shape = (self.args.num_layers, batch_size, self.args.hidden_size)
        zeros = torch.zeros(shape, device=device, dtype=self.embedding.dtype)
        return (zeros, zeros.clone()) if self.lstm else zeros

    def __call__(self, idx: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        if state is None:
            state = self.initial_state(idx.shape[0], idx.device)
        hs = state[0].unbind() if self.lstm else state.unbind()
        cs = state[1].unbind() if self.lstm else hs
        new_h, new_c, x = [], [], None
        for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(self.layers):
            hx = (hs[layer], cs[layer]) if self.lstm else hs[layer]
            if layer > 0:
                out = self.cell(x, hx, w_ih, w_hh, b_ih, b_hh)
            elif self.table is not None and idx.shape[0] == 1:
                projected = self.table[idx[0]]  # (gates*H,): this character's W_ih x + b_ih
                out = self.cell(self.no_input, hx, self.no_weight, w_hh, projected, b_hh)
            else:
                out = self.cell(F.embedding(idx, self.embedding), hx, w_ih, w_hh, b_ih, b_hh)
            x = out[0] if self.lstm else out
            new_h.append(x)  # (B, H); no dropout: generation runs in eval mode
            if self.lstm:
                new_c.append(out[1])
        logits = F.linear(x, *self.head)  # (B, V)
        return logits, ((torch.stack(new_h), torch.stack(new_c)) if self.lstm
                        else torch.stack(new_h))


def _input_table(embedding: torch.Tensor, w_ih: torch.Tensor, b_ih: torch.Tensor
                 ) -> torch.Tensor | None:
    """Every character's first-layer input projection W_ih x + b_ih, (V, gates*H); None
    where it would be larger than MAX_TABLE_BYTES."""
    if embedding.shape[0] * w_ih.shape[0] * embedding.element_size() > MAX_TABLE_BYTES:
        return None
    return F.linear(embedding, w_ih, b_ih)


def _blocks(weight: torch.Tensor, gates: int) -> torch.Tensor:
    """(gates*H, K) weights as (gates, K, H) blocks: x (B, K) @ blocks[g] is gate g's W x."""
    return weight.view(gates, -1, weight.shape[1]).transpose(1, 2).contiguous()


def _doubled_cell_gate(w_ih, w_hh, b_ih, b_hh) -> tuple:
    """An LSTM layer's weights with the cell gate's (the third quarter's) rows times two."""
    def doubled(weight: torch.Tensor) -> torch.Tensor:
        out = weight.clone()
        size = out.shape[0] // 4
        out[2 * size:3 * size] *= 2
        return out

    return doubled(w_ih), doubled(w_hh), doubled(b_ih), doubled(b_hh)


Stepper = BlockStepper | CellStepper
