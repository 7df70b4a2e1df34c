"""The id cache: a corpus encoded once into a flat file of ids, memory-mapped from there.

The ids are stored as uint8/16/32 by vocabulary size in the run directory (`ids.bin`, with
`ids.json` saying which corpus and vocabulary they encode), so a 2 GB corpus costs page cache,
not process memory, and a second run with the same corpus and vocabulary starts at once. The
vocabulary built from a corpus is cached beside it the same way (`vocab.json`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charrnn import fileio
from charrnn.corpus import Normalization, Source, iter_text
from charrnn.vocab import UNK_ID, CharCounter, Vocab

IDS_FILE, IDS_META = "ids.bin", "ids.json"
VOCAB_FILE, VOCAB_META = "vocab.json", "vocab.meta.json"


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
