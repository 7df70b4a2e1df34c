"""The id cache: a corpus encoded once into a flat file of ids, memory-mapped from there.

The ids are stored as uint8/16/32 by vocabulary size in the run directory (`ids.bin`, with
`ids.json` saying which corpus and vocabulary they encode), so a 2 GB corpus costs page cache,
not process memory, and a second run with the same corpus and vocabulary starts at once. The
vocabulary built from a corpus is cached beside it the same way (`vocab.json`).

The caches are no more readable than the files they were made from: encoding a private corpus
into a shared directory must not publish it.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charrnn import fileio, safeload
from charrnn.corpus import Normalization, Source, iter_text
from charrnn.errors import CharRNNError, VocabError
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
        with contextlib.suppress(VocabError):  # a damaged cache is made again
            return Vocab.load(cache_dir / VOCAB_FILE)
    counter = CharCounter()
    for piece in iter_text(sources, normalization, separator):
        counter.add(piece)
    vocab = counter.to_vocab(normalization, min_count)
    _forget(cache_dir / VOCAB_META)
    fileio.write_with(cache_dir / VOCAB_FILE, lambda f: f.write(vocab.to_json().encode()),
                      permissions=readable_as(sources), exact=True)
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
    meta = _read_json(cache_dir / IDS_META)
    path = cache_dir / IDS_FILE
    if isinstance(meta, dict) and meta.get("key") == key:
        cached = load_encoded(cache_dir, vocab)
        if cached is not None:
            return cached
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
    fileio.write_with(path, write, permissions=readable_as(sources), exact=True)
    fileio.write_text(cache_dir / IDS_META,
                      json.dumps({"key": key, "length": length, "unknown": unknown}))
    return EncodedCorpus(_map(path, vocab.dtype, length), unknown)


def load_encoded(cache_dir: Path, vocab: Vocab) -> EncodedCorpus | None:
    """The text cache_dir/ids.bin holds, if `vocab` encoded it; None otherwise.

    Reads only the cache, never the corpus it was made from (whose path the cache's key
    records, and which need not be the user's to read). The ids are checked to be ids of
    `vocab`, so a damaged or planted file cannot index past the model's embedding.
    """
    meta = _read_json(cache_dir / IDS_META)
    key = meta.get("key") if isinstance(meta, dict) else None
    if not isinstance(key, dict) or key.get("vocab") != vocab.digest \
            or key.get("dtype") != vocab.dtype.name:
        return None
    length, unknown = meta.get("length"), meta.get("unknown")
    if type(length) is not int or type(unknown) is not int or not 0 <= unknown <= length:
        return None
    path = cache_dir / IDS_FILE
    try:
        info = os.lstat(path)  # the run's own file, not a link to somewhere else
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_size != length * vocab.dtype.itemsize:
        return None
    ids = _map(path, vocab.dtype, length)
    if length and int(ids.max()) >= vocab.size:
        return None
    return EncodedCorpus(ids, unknown)


def readable_as(sources: list[Source]) -> int:
    """Permissions for a cache of `sources`: what a new file gets, less any read permission
    one of the sources withholds (a corpus only its owner may read gives an 0600 cache)."""
    mode = fileio.new_file_mode()
    for source in sources:
        if source.path is not None:
            with contextlib.suppress(OSError):
                mode &= stat.S_IMODE(source.path.stat().st_mode) | 0o600
    return mode | 0o600  # the owner always reads and rewrites its cache


def _map(path: Path, dtype: np.dtype, length: int) -> np.ndarray:
    if length == 0:
        return np.zeros(0, dtype=dtype)
    try:
        return np.memmap(path, dtype=dtype, mode="r", shape=(length,))
    except (OSError, ValueError) as exc:  # unreadable, or cut short since its key was written
        raise CharRNNError(f"cannot read {path} (the run's encoded corpus): "
                           f"{getattr(exc, 'strerror', None) or exc}; check its permissions, "
                           "or start the run again with --overwrite") from None


def _forget(meta: Path) -> None:
    # Dropped before the file it describes is rewritten: a process killed between the two
    # writes must not leave the old key vouching for the new file.
    with contextlib.suppress(OSError):
        meta.unlink()


def _read_json(path: Path) -> dict | None:
    if not path.is_file():  # a FIFO planted under the name would block the read
        return None
    try:
        return safeload.load_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
