"""The character vocabulary: which code points the model knows, as deterministic JSON.

Id 0 is `<unk>`, standing for every character the vocabulary does not hold (dropped by
`min_count`, or unseen when the vocabulary was built). The known characters follow, sorted by
code point, so the same text always gives the same vocabulary. Encoding and counting are
vectorised with numpy over UTF-32 code points: no Python loop runs per character.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from charrnn import fileio, safeload
from charrnn.corpus import Normalization
from charrnn.errors import UsageError, VocabError

UNK = "<unk>"
UNK_ID = 0
FORMAT = "charrnn-vocab"
VERSION = 1
_CODE_POINTS = 0x110000  # every Unicode code point
MIN_CHARS = 2  # a vocabulary of one character has nothing to learn
MAX_COUNT = 2**63  # counts are int64


def code_points(text: str) -> np.ndarray:
    """The code points of `text` as uint32, without a Python loop."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


@dataclass(frozen=True)
class Vocab:
    """A corpus's characters and their ids (0 is <unk>), with the normalisation the corpus was
    read with: `Vocab.build(texts)`, `Vocab.load(path)`, `encode(normalize(text))`, `decode`."""

    chars: tuple[str, ...]  # known characters sorted by code point; char i has id i + 1
    counts: tuple[int, ...]  # how often each was seen when the vocabulary was built
    unk_count: int = 0  # characters seen at build time but mapped to <unk> (min_count)
    min_count: int = 1
    normalization: Normalization = field(default_factory=Normalization)

    # ---- building -----------------------------------------------------------------------
    @classmethod
    def build(cls, pieces: Iterable[str], normalization: Normalization | None = None,
              min_count: int = 1) -> Vocab:
        """Count the characters of already-normalised text pieces and keep the frequent ones."""
        counter = CharCounter()
        for piece in pieces:
            counter.add(piece)
        return counter.to_vocab(normalization or Normalization(), min_count)

    # ---- mapping ------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Number of ids, <unk> included: the model's input and output width."""
        return len(self.chars) + 1

    @property
    def itos(self) -> tuple[str, ...]:
        return (UNK, *self.chars)

    @cached_property
    def stoi(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.itos)}

    @cached_property
    def _lookup(self) -> np.ndarray:
        # One id per code point, already in the id dtype so that encoding is a single gather
        # with no conversion afterwards; 1.1 to 4.4 MB, built on first use.
        table = np.full(_CODE_POINTS, UNK_ID, dtype=self.dtype)
        table[code_points("".join(self.chars))] = np.arange(1, self.size, dtype=self.dtype)
        return table

    @property
    def dtype(self) -> np.dtype:
        """Smallest unsigned integer type that holds every id."""
        if self.size <= 1 << 8:
            return np.dtype(np.uint8)
        if self.size <= 1 << 16:
            return np.dtype(np.uint16)
        return np.dtype(np.uint32)

    def encode(self, text: str) -> np.ndarray:
        """Ids of already-normalised text (unknown characters become <unk>)."""
        # np.take gathers about twice as fast as fancy indexing with a uint32 index.
        return np.take(self._lookup, code_points(text))

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(map(self.itos.__getitem__, ids))

    def unknown_chars(self, text: str) -> list[str]:
        """Distinct characters of `text` the vocabulary lacks, in order of first appearance."""
        points = code_points(text)
        unknown = points[self._lookup[points] == UNK_ID]
        return list(dict.fromkeys(chr(p) for p in unknown.tolist()))

    def normalize(self, text: str) -> str:
        """Apply this vocabulary's normalisation to user text such as a prime string."""
        return self.normalization.apply(text)

    # ---- identity and storage -----------------------------------------------------------
    @cached_property
    def digest(self) -> str:
        """Hash of what decides the mapping (characters and normalisation), not the counts."""
        key = json.dumps([self.chars, self.normalization.to_dict()], ensure_ascii=True)
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    @property
    def total(self) -> int:
        return sum(self.counts) + self.unk_count

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "size": self.size,
            "unk": UNK,
            "unk_count": self.unk_count,
            "min_count": self.min_count,
            "normalization": self.normalization.to_dict(),
            "chars": list(self.chars),
            "counts": list(self.counts),
        }

    def to_json(self) -> str:
        # ensure_ascii=False keeps 红楼梦 readable in the file; escapes keep \n and \t visible.
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n"

    def save(self, path: str | Path) -> None:
        fileio.write_text(path, self.to_json())

    @classmethod
    def from_dict(cls, data: object, origin: str = "vocabulary") -> Vocab:
        problems = _validate_dict(data)
        if problems:
            raise VocabError(f"{origin} is not a valid charrnn vocabulary ({'; '.join(problems)})"
                             "; rebuild it with `charrnn vocab build`")
        return cls(chars=tuple(data["chars"]), counts=tuple(data["counts"]),
                   unk_count=data.get("unk_count", 0), min_count=data.get("min_count", 1),
                   normalization=Normalization.from_dict(data.get("normalization", {})))

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        path = Path(path).expanduser()
        kind = fileio.file_kind(path)
        if kind == "missing":
            raise VocabError(f"vocabulary file not found: {path}; build one with "
                             f"`charrnn vocab build CORPUS -o {shlex.quote(str(path))}`")
        if kind != "file":
            raise VocabError(f"cannot read vocabulary {path}: {fileio.what_it_is(kind)}, not a "
                             "regular file; name a vocab.json file")
        try:  # utf-8-sig: a BOM, as Notepad saves files, is not an error
            data = safeload.load_json(path.read_text(encoding="utf-8-sig"))
        except (OSError, ValueError) as exc:  # JSON, UTF-8 and nesting errors alike
            raise VocabError(f"cannot read vocabulary {path}: {exc}; rebuild it with "
                             "`charrnn vocab build`") from None
        return cls.from_dict(data, origin=str(path))


def _validate_dict(data: object) -> list[str]:
    if not isinstance(data, dict):
        return ["not a JSON object"]
    if data.get("format") != FORMAT:
        return [f"'format' is not {FORMAT!r}"]
    problems = []
    if data.get("version") != VERSION:
        problems.append(f"unsupported version {data.get('version')!r}")
    chars, counts = data.get("chars"), data.get("counts")
    if not isinstance(chars, list) or not all(isinstance(c, str) and len(c) == 1 for c in chars):
        problems.append("'chars' must be a list of single characters")
    elif any("\ud800" <= c <= "\udfff" for c in chars):  # no UTF-8 text can hold one
        problems.append("'chars' holds a lone surrogate (U+D800-U+DFFF), which no text can "
                        "hold and no output can be written with")
    elif len(set(chars)) != len(chars):
        problems.append("'chars' has duplicates")
    elif chars != sorted(chars):
        problems.append("'chars' is not sorted")
    elif len(chars) + 1 < MIN_CHARS:
        problems.append("'chars' is empty")
    # Counts are 64-bit when counted; past that they are not counts (nor would sums of them
    # convert to a float for a percentage).
    if not isinstance(counts, list) or not all(type(n) is int and 0 <= n < MAX_COUNT
                                               for n in counts):
        problems.append("'counts' must be a list of non-negative integers")
    elif isinstance(chars, list) and len(counts) != len(chars):
        problems.append("'counts' and 'chars' differ in length")
    for key in ("unk_count", "min_count"):
        if key in data and (type(data[key]) is not int or not 0 <= data[key] < MAX_COUNT):
            problems.append(f"'{key}' must be a non-negative integer")
    norm = data.get("normalization", {})
    try:
        Normalization.from_dict(norm)
    except (TypeError, ValueError):
        problems.append("'normalization' is malformed")
    return problems


class CharCounter:
    """Streaming character counts over any amount of text."""

    def __init__(self) -> None:
        self.counts = np.zeros(_CODE_POINTS, dtype=np.int64)

    def add(self, text: str) -> None:
        if text:
            # As long as the largest code point in the text, not all 0x110000 of them: a
            # directory of 100,000 small files took 170 s adding 8.9 MB arrays.
            counted = np.bincount(code_points(text))
            self.counts[:len(counted)] += counted

    def to_vocab(self, normalization: Normalization, min_count: int = 1) -> Vocab:
        if min_count < 1:
            raise UsageError(f"min_count must be at least 1 (got {min_count})")
        seen = np.flatnonzero(self.counts)
        kept = seen[self.counts[seen] >= min_count]
        dropped = int(self.counts[seen].sum() - self.counts[kept].sum())
        if len(seen) == 0:
            raise VocabError("the corpus is empty (no characters after normalisation); "
                             "point at a file with text in it")
        if all(chr(p).isspace() for p in seen.tolist()):
            raise VocabError("the corpus holds only whitespace: nothing to learn; point at a "
                             "file with text in it")
        if len(kept) + (1 if dropped else 0) < MIN_CHARS:
            if dropped:
                raise VocabError(f"only {len(kept)} of the corpus's {len(seen)} distinct "
                                 f"characters occur at least min_count ({min_count}) times; "
                                 "a language model needs at least two: lower min_count "
                                 "(--min-count, data.min_count) or use more text")
            raise VocabError(f"the corpus has only {len(seen)} distinct character"
                             f"{'s' if len(seen) != 1 else ''}; a language model needs at "
                             "least two: use more varied text")
        chars = tuple(chr(p) for p in kept.tolist())
        return Vocab(chars=chars, counts=tuple(self.counts[kept].tolist()),
                     unk_count=dropped, min_count=min_count, normalization=normalization)
