"""Scoring text with a trained model: nats and bits per character, every character once.

`score_stream` is the model's own log-likelihood of the text read from start to end with the
recurrent state carried throughout. To use a batch, the text is cut into segments read in
parallel; every segment but the first is preceded by `burn_in` characters that are read but
not scored, so its first scored characters already have a warmed-up state, as in one pass.
`score_windows` instead limits every character to at most `window` characters of context, the
way transformer evaluations are reported.

The work is bounded by the text, whatever is asked: a window longer than the text is the text,
no more segments are read than the text has room for, and the segments read at once are
limited by the memory the machine has (memory.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from charrnn import devices, memory
from charrnn.errors import CharRNNError
from charrnn.model import CharRNN, map_state

CHUNK = 256  # time steps per forward call: bounds the (B, T, V) logits held in memory
MOSTLY_UNKNOWN = 0.5  # above this share of <unk>, a score says nothing about the model


@dataclass(frozen=True)
class Score:
    """A model's score on a text: its total log-loss and the characters scored."""

    nats: float  # total negative log-likelihood, in nats
    chars: int  # characters scored

    @property
    def loss(self) -> float:
        """Mean nats per character."""
        return self.nats / max(self.chars, 1)

    @property
    def bpc(self) -> float:
        """Mean bits per character."""
        return self.loss / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0))

    def line(self) -> str:
        return (f"{self.loss:.4f} nats/char  {self.bpc:.4f} bits/char  "
                f"perplexity {_perplexity_text(self.perplexity)}  ({self.chars:,} chars)")


def _perplexity_text(value: float) -> str:
    # An untrained model's perplexity can have hundreds of digits: scientific notation then.
    return f"{value:.2f}" if value < 1e6 else f"{value:.3e}"


def default_streams(n_chars: int, burn_in: int, device: torch.device, parts: int = 1) -> int:
    # Segments of at least 4x the burn-in keep the extra reading under 25%. Several processes
    # share the segments: more of them, each shorter, finish sooner.
    cap = (256 if device.type == "cuda" else 64) * parts
    return int(max(1, min(cap, n_chars // (4 * burn_in))))


@torch.no_grad()
def score_stream(model: CharRNN, ids: np.ndarray, device: torch.device, *,
                 streams: int | None = None, burn_in: int = 1024,
                 part: tuple[int, int] = (0, 1)) -> Score:
    """Full stateful pass: every character after the first scored exactly once.

    With `part` = (index, parts), only that share of the segments is scored: the parts' sums
    of nats and characters add up to the whole text's score.
    """
    targets = len(ids) - 1
    if targets < 1:
        return Score(0.0, 0)
    index, parts = part
    if streams:
        # More segments than the text has room for, each shorter than its burn-in, only add
        # reading; asked for explicitly, they must also fit in memory.
        streams = max(1, min(streams, targets // burn_in if burn_in else targets))
        _check_rows_fit(model, streams, CHUNK, device)
    else:
        streams = default_streams(targets, burn_in, device, parts)
        if parts == 1:  # processes sharing the segments must all lay them out alike
            streams = _rows_that_fit(model, streams, CHUNK, device)
        _check_rows_fit(model, streams // parts or 1, CHUNK, device)
    burn_in = burn_in if streams > 1 else 0
    # Row 0 starts at the text's start and reads `length` inputs, all scored; row s >= 1 reads
    # burn_in unscored inputs and then its own segment. Equal rows: targets =
    # length + (streams - 1) * (length - burn_in).
    length = math.ceil((targets + (streams - 1) * burn_in) / streams)
    starts = [0]
    for _ in range(1, streams):
        starts.append(starts[-1] + (length if len(starts) == 1 else length - burn_in))
    scored_from = np.array([0] + [burn_in] * (streams - 1))
    rows = np.array([s - burn_in if i else 0 for i, s in enumerate(starts)])
    if parts > 1:
        mine = np.array_split(np.arange(streams), parts)[index]
        rows, scored_from = rows[mine], scored_from[mine]
    return _score_rows(model, ids, rows, length, scored_from, targets, device)


@torch.no_grad()
def score_windows(model: CharRNN, ids: np.ndarray, window: int, device: torch.device,
                  batch: int = 256) -> Score:
    """Each character scored with at most `window` characters of context (0..window-1)."""
    targets = len(ids) - 1
    window = max(1, min(window, targets))  # more context than the text holds is the text
    batch = _rows_that_fit(model, batch, min(window, CHUNK), device)
    rows = np.arange(0, targets, window)
    total = 0.0
    for i in range(0, len(rows), batch):
        chunk = rows[i:i + batch]
        total += _score_rows(model, ids, chunk, window, np.zeros(len(chunk), dtype=np.int64),
                             targets, device).nats
    return Score(total, targets)


def _score_rows(model: CharRNN, ids: np.ndarray, rows: np.ndarray, length: int,
                scored_from: np.ndarray, targets: int, device: torch.device) -> Score:
    """Read ids[row : row + length] per row (inputs) and sum the loss of scored positions.

    Positions before `scored_from[row]` only warm the state; positions past the last target
    are padding and are masked out.
    """
    if len(rows) == 0:  # a process with no segment of its own to score
        return Score(0.0, 0)
    was_training = model.training
    model.eval()
    try:
        state = None
        total = torch.zeros((), dtype=torch.float64, device=device)
        count = 0
        offsets = np.arange(CHUNK)
        for t0 in range(0, length, CHUNK):
            t = min(CHUNK, length - t0)
            pos = rows[:, None] + t0 + offsets[None, :t]  # (B, t) input positions
            valid = (pos < targets) & (t0 + offsets[None, :t] >= scored_from[:, None])
            safe = np.minimum(pos, targets - 1)
            x = torch.from_numpy(ids[safe].astype(np.int64)).to(device)
            y = torch.from_numpy(ids[safe + 1].astype(np.int64)).to(device)
            mask = torch.from_numpy(valid).to(device)
            logits, _, state = model(x, state=state)  # (B, t, V)
            nll = F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none")  # (B, t)
            total += (nll * mask).sum(dtype=torch.float64)
            count += int(valid.sum())
            state = map_state(torch.Tensor.detach, state)
        return Score(float(total), count)
    finally:
        model.train(was_training)


def _rows_that_fit(model: CharRNN, rows: int, length: int, device: torch.device) -> int:
    """As many of `rows` read at once as memory holds (at least one, which must fit)."""
    available = memory.available_bytes() if device.type == "cpu" else None
    if available is not None:
        each = memory.scoring_bytes(model.args, 1, length)
        rows = min(rows, max(1, available // (2 * each)))  # half: the rest is the process's
    _check_rows_fit(model, rows, length, device)
    return rows


def _check_rows_fit(model: CharRNN, rows: int, length: int, device: torch.device) -> None:
    if device.type == "cpu":
        memory.check_fits(memory.scoring_bytes(model.args, rows, length),
                          f"scoring {rows:,} parallel segment{'s' if rows != 1 else ''} of text",
                          "lower --streams (1 reads the text as one sequential pass)")


def score_text(model: CharRNN, ids: np.ndarray, device: torch.device | str, *,
               window: int | None = None, streams: int | None = None) -> Score:
    """Score `ids` (`vocab.encode(vocab.normalize(text))`): in one full stateful pass, or with
    at most `window` characters of context."""
    device = devices.named_device(device)
    if len(ids) < 2:
        raise CharRNNError("the text to score has fewer than two characters; give more text")
    if window:
        return score_windows(model, ids, window, device)
    return score_stream(model, ids, device, streams=streams)


def check_coverage(chars: int, unknown: int, warn: Callable[[str], None]) -> None:
    """Refuse text that is mostly unknown to the model; warn about the <unk> in the rest."""
    if unknown > MOSTLY_UNKNOWN * chars:
        raise CharRNNError(f"{unknown:,} of the {chars:,} characters to score are not in the "
                           "model's vocabulary: the text does not match the model; score text "
                           "like its training data")
    if unknown:
        warn(f"{unknown:,} characters are not in the model's vocabulary and are scored as <unk>")
