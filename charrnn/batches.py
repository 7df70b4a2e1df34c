"""Training batches from a text of ids: contiguous streams or independent random windows.

Both batchers hand out `(x, y, reset)`: inputs and targets of shape (B, T), and which streams
must start from a blank hidden state. Under data parallelism (`part`), every process lays out
the same global batch and takes its own contiguous share of the rows.
"""

from __future__ import annotations

import numpy as np
import torch

from charrnn.config import DataConfig
from charrnn.errors import ConfigError, CorpusError


def windows_to_tensors(ids: np.ndarray, starts: np.ndarray, seq_len: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """x = ids[i:i+T], y = ids[i+1:i+T+1] for every start i: (B, T) int64 tensors."""
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]  # (B, T+1)
    window = torch.from_numpy(ids[idx].astype(np.int64))
    return window[:, :-1], window[:, 1:]


def check_window_fits(length: int, seq_len: int, what: str = "the training text",
                      fix: str = "use more text or a smaller data.seq_len") -> None:
    """Refuse a text shorter than one window of `seq_len` inputs and their targets."""
    if length < seq_len + 1:
        raise CorpusError(f"{what} has {length:,} characters, fewer than one window "
                          f"(data.seq_len + 1 = {seq_len + 1}); {fix}")


def check_split(batch_size: int, parts: int) -> None:
    if batch_size % parts:
        raise ConfigError([f"'data.batch_size' is {batch_size}, the total over all processes, "
                           f"which does not split evenly over {parts} processes; use a multiple "
                           f"of {parts}"])


def _rows(part: tuple[int, int], batch_size: int) -> slice:
    """The rows of a global batch that process `index` of `parts` trains on."""
    index, parts = part
    share = batch_size // parts
    return slice(index * share, (index + 1) * share)


class StreamBatches:
    """`batch_size` contiguous streams walked `seq_len` characters at a time (truncated BPTT).

    Stream b covers one contiguous slice of the training text, so the hidden state left by one
    batch is the right context for the next. At each epoch the slices shift by a random offset
    (so window boundaries differ between epochs) and `reset` tells the trainer to zero the state.

    Besides, each stream's state is zeroed at random, on average every `reset_every`
    characters: otherwise the model only ever starts from a blank state at epoch starts and
    can fail to recover from one, which is exactly how sampling and evaluation begin.

    `part` = (index, parts) splits the streams between data-parallel processes: every process
    lays out the same `batch_size` streams and walks only its own contiguous share of them
    (`rows`), so between them they read each character once per epoch, as one process would.
    """

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int, seed: int,
                 part: tuple[int, int] = (0, 1), reset_every: int = 0):
        check_window_fits(len(ids), seq_len)
        usable = len(ids) - 1  # the last character is only ever a target
        parts = part[1]
        check_split(batch_size, parts)
        self.ids, self.seq_len = ids, seq_len
        streams = min(batch_size, usable // seq_len)  # short corpora: fewer streams
        self.batch_size = streams - streams % parts  # ... but as many for every process
        if self.batch_size == 0:
            raise CorpusError(f"the training text has {len(ids):,} characters, fewer than one "
                              f"window (data.seq_len = {seq_len}) for each of the {parts} "
                              "processes; use more text, a smaller data.seq_len or fewer "
                              "processes")
        self.rows = _rows(part, self.batch_size)
        self.stream_len = usable // self.batch_size
        per_stream = self.stream_len // seq_len
        # Keep about one window of slack so the epoch offset can move the window boundaries.
        self.windows = per_stream - 1 if per_stream >= 2 and self.stream_len % seq_len == 0 \
            else per_stream
        self.slack = self.stream_len - self.windows * seq_len
        # Chance that a stream starts a window from a blank state (0: only at epoch starts).
        self.reset_chance = min(seq_len / reset_every, 1.0) if reset_every else 0.0
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch, self.window = 0, 0
        self.offset = self._draw_offset()

    @property
    def chars_per_epoch(self) -> int:
        return self.batch_size * self.windows * self.seq_len

    def _draw_offset(self) -> int:
        return int(torch.randint(0, self.slack + 1, (1,), generator=self.generator))

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x, y, reset): reset (B,) marks the streams whose state must be zeroed first."""
        if self.window == 0:  # the streams start over
            reset = torch.ones(self.batch_size, dtype=torch.bool)
        else:  # drawn for every stream, so each process sees its share of the same draw
            reset = torch.rand(self.batch_size, generator=self.generator) < self.reset_chance
        reset = reset[self.rows]
        starts = (np.arange(self.batch_size)[self.rows] * self.stream_len + self.offset
                  + self.window * self.seq_len)
        x, y = windows_to_tensors(self.ids, starts, self.seq_len)
        self.window += 1
        if self.window == self.windows:
            self.epoch, self.window = self.epoch + 1, 0
            self.offset = self._draw_offset()
        return x, y, reset

    @property
    def progress(self) -> float:
        """Epochs done, fractional."""
        return self.epoch + self.window / self.windows

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "window": self.window, "offset": self.offset,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position (ValueError if it is not one of this text's)."""
        epoch, window, offset = state["epoch"], state["window"], state["offset"]
        _check_whole("epoch", epoch, 0, None)
        _check_whole("window", window, 0, self.windows - 1)
        _check_whole("offset", offset, 0, self.slack)
        self.generator.set_state(state["generator"])
        self.epoch, self.window, self.offset = epoch, window, offset


class RandomBatches:
    """Independent random windows, each starting from a zero state (nanoGPT-style).

    Under data parallelism every process draws the same `batch_size` windows and keeps its own
    share (`rows`): one process with the whole batch would train on the very same windows.
    """

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int, seed: int,
                 part: tuple[int, int] = (0, 1)):
        check_window_fits(len(ids), seq_len)
        check_split(batch_size, part[1])
        self.ids, self.batch_size, self.seq_len = ids, batch_size, seq_len
        self.rows = _rows(part, batch_size)
        self.generator = torch.Generator().manual_seed(seed)
        self.steps = 0

    @property
    def chars_per_epoch(self) -> int:
        return len(self.ids) - 1

    @property
    def progress(self) -> float:
        return self.steps * self.batch_size * self.seq_len / self.chars_per_epoch

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        high = len(self.ids) - self.seq_len
        starts = torch.randint(0, high, (self.batch_size,), generator=self.generator).numpy()
        starts = starts[self.rows]
        self.steps += 1
        x, y = windows_to_tensors(self.ids, starts, self.seq_len)
        return x, y, torch.ones(len(starts), dtype=torch.bool)  # every window starts blank

    def state_dict(self) -> dict:
        return {"steps": self.steps, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position (ValueError if it is not one)."""
        _check_whole("steps", state["steps"], 0, None)
        self.generator.set_state(state["generator"])
        self.steps = state["steps"]


def _check_whole(name: str, value: object, least: int, most: int | None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < least \
            or (most is not None and value > most):
        raise ValueError(f"the saved data position's {name} is {value!r}")



def make_batches(cfg: DataConfig, ids: np.ndarray, seed: int,
                 part: tuple[int, int] = (0, 1)) -> StreamBatches | RandomBatches:
    """The batcher `data.batching` names, over the training ids."""
    if cfg.batching == "stream":
        return StreamBatches(ids, cfg.batch_size, cfg.seq_len, seed=seed, part=part,
                             reset_every=cfg.reset_every)
    return RandomBatches(ids, cfg.batch_size, cfg.seq_len, seed=seed, part=part)
