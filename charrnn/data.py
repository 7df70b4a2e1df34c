"""From text to training batches: encoded id files, the train/val split and the batchers.

The corpus is encoded once, block by block, into a flat file of ids (uint8/16/32 by vocabulary
size) in the run directory and memory-mapped from there, so a 2 GB corpus costs page cache,
not process memory, and a second run with the same corpus and vocabulary starts at once.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from charrnn import fileio
from charrnn.corpus import Normalization, Source, iter_text
from charrnn.errors import CorpusError
from charrnn.vocab import UNK_ID, CharCounter, Vocab, VocabError

IDS_FILE, IDS_META = "ids.bin", "ids.json"
VOCAB_FILE, VOCAB_META = "vocab.json", "vocab.meta.json"


# ---- encoding and caching -------------------------------------------------------------------
def corpus_fingerprint(sources: list[Source], separator: str) -> list:
    return [[s.fingerprint() for s in sources], separator]


def build_vocab_cached(sources: list[Source], normalization: Normalization, min_count: int,
                       separator: str, cache_dir: Path) -> Vocab:
    """Count characters into a vocabulary, reusing cache_dir/vocab.json when nothing changed."""
    key = {"corpus": corpus_fingerprint(sources, separator),
           "normalization": normalization.to_dict(), "min_count": min_count}
    cached = _read_json(cache_dir / VOCAB_META)
    if cached == key and (cache_dir / VOCAB_FILE).is_file():
        return Vocab.load(cache_dir / VOCAB_FILE)
    counter = CharCounter()
    for piece in iter_text(sources, normalization, separator):
        counter.add(piece)
    vocab = counter.to_vocab(normalization, min_count)
    _forget(cache_dir / VOCAB_META)
    vocab.save(cache_dir / VOCAB_FILE)
    fileio.write_text(cache_dir / VOCAB_META, json.dumps(key))
    return vocab


@dataclass
class EncodedCorpus:
    ids: np.ndarray  # (N,) memory-mapped ids of the whole corpus
    unknown: int  # characters that became <unk>

    def split(self, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
        """Contiguous split: the last `val_fraction` of the text is validation (as nanoGPT)."""
        cut = int(len(self.ids) * (1.0 - val_fraction))
        return self.ids[:cut], self.ids[cut:]


def encode_cached(sources: list[Source], vocab: Vocab, separator: str, cache_dir: Path,
                  on_progress: Callable[[int], None] | None = None) -> EncodedCorpus:
    """Encode the corpus into cache_dir/ids.bin unless an identical encoding is already there."""
    key = {"corpus": corpus_fingerprint(sources, separator), "vocab": vocab.digest,
           "dtype": vocab.dtype.name}
    meta = _read_json(cache_dir / IDS_META) or {}
    path = cache_dir / IDS_FILE
    if meta.get("key") == key and path.is_file() and path.stat().st_size == (
            meta["length"] * vocab.dtype.itemsize):
        return EncodedCorpus(_map(path, vocab.dtype, meta["length"]), meta["unknown"])
    length = unknown = 0

    def write(f) -> None:
        nonlocal length, unknown
        for piece in iter_text(sources, vocab.normalization, separator):
            ids = vocab.encode(piece)
            unknown += int(np.count_nonzero(ids == UNK_ID))
            length += len(ids)
            f.write(ids)  # the array's own buffer: no copy
            if on_progress:
                on_progress(len(ids))

    _forget(cache_dir / IDS_META)
    fileio.write_with(path, write)
    fileio.write_text(cache_dir / IDS_META,
                      json.dumps({"key": key, "length": length, "unknown": unknown}))
    return EncodedCorpus(_map(path, vocab.dtype, length), unknown)


def _map(path: Path, dtype: np.dtype, length: int) -> np.ndarray:
    if length == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(length,))


def _forget(meta: Path) -> None:
    # Dropped before the file it describes is rewritten: a process killed between the two
    # writes must not leave the old key vouching for the new file.
    with contextlib.suppress(OSError):
        meta.unlink()


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ---- batching -------------------------------------------------------------------------------
def windows_to_tensors(ids: np.ndarray, starts: np.ndarray, seq_len: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """x = ids[i:i+T], y = ids[i+1:i+T+1] for every start i: (B, T) int64 tensors."""
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]  # (B, T+1)
    window = torch.from_numpy(ids[idx].astype(np.int64))
    return window[:, :-1], window[:, 1:]


def _check_split(batch_size: int, parts: int) -> None:
    if batch_size % parts:
        from charrnn.errors import ConfigError

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
        usable = len(ids) - 1  # the last character is only ever a target
        if usable < seq_len:
            raise CorpusError(f"the training text has {len(ids):,} characters, fewer than one "
                              f"window (data.seq_len + 1 = {seq_len + 1}); use more text or a "
                              "smaller data.seq_len")
        parts = part[1]
        _check_split(batch_size, parts)
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
        self.epoch, self.window, self.offset = state["epoch"], state["window"], state["offset"]
        self.generator.set_state(state["generator"])


class RandomBatches:
    """Independent random windows, each starting from a zero state (nanoGPT-style).

    Under data parallelism every process draws the same `batch_size` windows and keeps its own
    share (`rows`): one process with the whole batch would train on the very same windows.
    """

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int, seed: int,
                 part: tuple[int, int] = (0, 1)):
        if len(ids) - 1 < seq_len:
            raise CorpusError(f"the training text has {len(ids):,} characters, fewer than one "
                              f"window (data.seq_len + 1 = {seq_len + 1}); use more text or a "
                              "smaller data.seq_len")
        _check_split(batch_size, part[1])
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
        self.steps = state["steps"]
        self.generator.set_state(state["generator"])


BATCHERS = {"stream": StreamBatches, "random": RandomBatches}


# ---- from a data config to train/val ids ----------------------------------------------------
@dataclass
class Dataset:
    vocab: Vocab
    train: np.ndarray
    val: np.ndarray
    unknown: int  # corpus characters that became <unk>
    key: dict  # identifies this encoding; a resumed run checks it is unchanged


def check_named_vocab(cfg, vocab: Vocab) -> None:
    """A checkpoint keeps its vocabulary: refuse a data.vocab that says otherwise."""
    if not cfg.vocab or not Path(cfg.vocab).is_file():
        return  # nothing named, or a file since removed: the checkpoint's vocabulary is used
    named = Vocab.load(cfg.vocab)
    if named.digest == vocab.digest:
        return
    only_file = len(set(named.chars) - set(vocab.chars))
    only_checkpoint = len(set(vocab.chars) - set(named.chars))
    detail = (f"{only_file:,} characters only in the file, {only_checkpoint:,} only in the "
              "checkpoint" if only_file or only_checkpoint else "another normalisation")
    raise VocabError(f"data.vocab {cfg.vocab} is not the vocabulary of the checkpoint "
                     f"({detail}); a model keeps the vocabulary it was trained with: remove "
                     "data.vocab (--set data.vocab=null) to use the checkpoint's")


def normalization_for(cfg, vocab: Vocab | None) -> Normalization:
    """The config's normalisation, or the given vocabulary's (which must not contradict it)."""
    wanted = {k: getattr(cfg, k) for k in ("lowercase", "newline", "unicode", "strip_bom")}
    if vocab is None:
        defaults = Normalization()
        return Normalization(**{k: defaults.__dict__[k] if v is None else v
                                for k, v in wanted.items()})
    have = vocab.normalization.to_dict()
    clashes = [f"'data.{k}' is {v!r} but the vocabulary was built with {have[k]!r}"
               for k, v in wanted.items() if v is not None and v != have[k]]
    if clashes:
        from charrnn.errors import ConfigError

        raise ConfigError([*clashes[:-1], clashes[-1] + " (remove the key to use the "
                           "vocabulary's setting, or rebuild the vocabulary)"])
    return vocab.normalization


def prepare(cfg, cache_dir: Path, vocab: Vocab | None = None,
            say: Callable[[str], None] = print) -> Dataset:
    """Resolve, normalise, build or check the vocabulary, encode (cached), split, check sizes.

    `cfg` is a DataConfig; `vocab` (from a checkpoint) takes precedence over cfg.vocab.
    """
    from charrnn.corpus import resolve_sources

    sources = resolve_sources(cfg.path)
    if vocab is None and cfg.vocab:
        vocab = Vocab.load(cfg.vocab)
    given = vocab is not None
    normalization = normalization_for(cfg, vocab)
    if vocab is None:
        vocab = build_vocab_cached(sources, normalization, cfg.min_count, cfg.separator,
                                   cache_dir)
    encoded = encode_cached(sources, vocab, cfg.separator, cache_dir)
    n = len(encoded.ids)
    if encoded.unknown and given:
        share = 100.0 * encoded.unknown / max(n, 1)
        message = (f"{encoded.unknown:,} characters ({share:.2f}%) of the corpus are not in the "
                   "vocabulary")
        if cfg.unknown == "error":
            raise CorpusError(f"{message}; use a vocabulary built from this corpus, or set "
                              "data.unknown: warn to map them to <unk>")
        say(f"[yellow]warning:[/] {message} and became <unk>")
    if n == 0:
        raise CorpusError(f"the corpus {cfg.path} is empty; point data.path at text")
    train, val = encoded.split(cfg.val_fraction)
    if len(train) < cfg.seq_len + 1:
        raise CorpusError(f"the training text has {len(train):,} characters, fewer than one "
                          f"window (data.seq_len + 1 = {cfg.seq_len + 1}); use more text or a "
                          "smaller data.seq_len")
    if len(val) < cfg.seq_len + 1:
        raise CorpusError(f"the validation split has {len(val):,} characters, fewer than one "
                          f"window (data.seq_len + 1 = {cfg.seq_len + 1}); raise "
                          "data.val_fraction, use more text or a smaller data.seq_len")
    key = {"length": n, "vocab": vocab.digest, "val_fraction": cfg.val_fraction}
    return Dataset(vocab, train, val, encoded.unknown, key)
