"""From a data config to the training and validation ids: the dataset a run trains on.

`load_dataset` resolves the corpus, builds or checks the vocabulary, encodes the text through
the id cache (idcache.py) and splits it: the last `data.val_fraction` is validation.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charrnn.batches import check_window_fits
from charrnn.config import DataConfig
from charrnn.corpus import Normalization, iter_text, resolve_sources, total_bytes
from charrnn.errors import CharRNNWarning, ConfigError, CorpusError, VocabError
from charrnn.idcache import (
    IDS_FILE,
    build_vocab_cached,
    encode_cached,
    load_encoded,
    readable_as,
)
from charrnn.memory import check_fits
from charrnn.vocab import UNK_ID, Vocab

# What identifies a corpus on resume besides its length: a digest of this many runs of ids.
SAMPLED_BLOCKS, SAMPLED_BLOCK = 256, 4096


@dataclass
class Dataset:
    vocab: Vocab
    train: np.ndarray
    val: np.ndarray
    unknown: int  # corpus characters that became <unk>
    key: dict  # identifies this encoding; a resumed run checks it is unchanged
    # Permissions for files made from the text (caches, checkpoints): none more readable than
    # the corpus (idcache.readable_as), so a private corpus gives private checkpoints.
    file_mode: int | None = None


def load_dataset(cfg: DataConfig, cache_dir: Path, vocab: Vocab | None = None,
                 warn: Callable[[str], None] | None = None) -> Dataset:
    """Resolve, normalise, build or check the vocabulary, encode (cached), split, check sizes.

    `vocab` (from a checkpoint) takes precedence over cfg.vocab. `warn` hears about corpus
    characters the vocabulary lacks (by default Python's `warnings`, as CharRNNWarning).
    """
    warn = warn or (lambda text: warnings.warn(text, CharRNNWarning, stacklevel=3))
    sources = resolve_sources(cfg.path, run_dir=cache_dir)
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
        warn(f"{message} and became <unk>")
    elif (added := encoded.unknown - vocab.unk_count) > 0:  # beyond data.min_count's
        which = "character of the corpus is" if added == 1 else "characters of the corpus are"
        warn(f"{added:,} {which} not in the vocabulary counted from it a moment before (a "
             "file changed while it was read) and became <unk>; train again once the corpus "
             "has stopped changing")
    if n == 0:
        raise CorpusError(f"the corpus {cfg.path} is empty; point data.path at text")
    train, val = encoded.split(cfg.val_fraction)
    check_window_fits(len(train), cfg.seq_len)
    check_window_fits(len(val), cfg.seq_len, "the validation split",
                      "raise data.val_fraction, use more text or a smaller data.seq_len")
    key = {"length": n, "vocab": vocab.digest, "val_fraction": cfg.val_fraction,
           "sampled": sampled_digest(encoded.ids)}
    return Dataset(vocab, train, val, encoded.unknown, key, readable_as(sources))


def same_corpus(saved: dict | None, current: dict) -> bool:
    """Whether a checkpoint's data key names this encoding of this corpus. Keys saved before
    a field existed are compared on the fields they have (their runs resume as before)."""
    return saved is not None and all(current.get(name) == value for name, value in saved.items())


def sampled_digest(ids: np.ndarray, blocks: int = SAMPLED_BLOCKS,
                   block: int = SAMPLED_BLOCK) -> str:
    """A digest of `blocks` evenly spaced runs of `block` ids (all of a short text): two
    corpora of one length tell apart, at a cost that does not grow with the corpus."""
    digest = hashlib.blake2b(digest_size=16)
    step = max(block, len(ids) // blocks)
    for start in range(0, len(ids), step):
        digest.update(np.ascontiguousarray(ids[start:start + block]).tobytes())
    return digest.hexdigest()


def run_validation_split(run_dir: Path, vocab: Vocab, val_fraction: float) -> np.ndarray:
    """The validation split of the text a run directory holds encoded (ids.bin), for scoring
    a checkpoint without naming a file: the corpus itself is never read (its path, stored in
    the checkpoint, is not the user's word)."""
    encoded = load_encoded(run_dir, vocab)
    if encoded is None:
        raise CorpusError(f"{run_dir} holds no encoded text for this checkpoint's vocabulary "
                          f"({IDS_FILE} is missing, from another run, or damaged); name the text "
                          "to score: charrnn eval --checkpoint CHECKPOINT FILE...")
    _, val = encoded.split(val_fraction)
    return val


def encode_files(specs: Sequence[str], vocab: Vocab) -> tuple[np.ndarray, int]:
    """Text named on a command line, encoded with a model's vocabulary: (ids, unknown count).

    Held in memory whole (the pieces, then joined): refused first if that cannot fit.
    """
    sources = resolve_sources(specs)
    size = total_bytes(sources)  # characters are at most bytes
    check_fits(2 * size * vocab.dtype.itemsize, f"the text to score ({size:,} bytes)",
               "score less text at a time")
    pieces = [vocab.encode(p) for p in iter_text(sources, vocab.normalization)]
    ids = np.concatenate(pieces) if pieces else np.zeros(0, dtype=vocab.dtype)
    return ids, int(np.count_nonzero(ids == UNK_ID))


def check_named_vocab(cfg: DataConfig, vocab: Vocab) -> None:
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


def normalization_for(cfg: DataConfig, vocab: Vocab | None) -> Normalization:
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
        raise ConfigError([*clashes[:-1], clashes[-1] + " (remove the key to use the "
                           "vocabulary's setting, or rebuild the vocabulary)"])
    return vocab.normalization
