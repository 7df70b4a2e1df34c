"""Human-readable views of charrnn objects (rich tables), kept out of the library modules."""

from __future__ import annotations

import unicodedata

from rich.table import Table

from charrnn.vocab import Vocab

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", " ": "␠ (space)",
          "\u3000": "\\u3000 (ideographic space)", "\ufeff": "\\ufeff (BOM)"}


def printable(char: str) -> str:
    """A character as a person can read it in a table: escapes for whitespace and controls."""
    if char in _NAMED:
        return _NAMED[char]
    if unicodedata.category(char)[0] in "CZ":  # controls, format chars, other separators
        return f"\\u{ord(char):04x}"
    return char


def vocab_tables(vocab: Vocab, top: int, title: str = "vocabulary") -> list[Table]:
    summary = Table(title=title, show_header=False)
    summary.add_column("what", style="bold")
    summary.add_column("value")
    total = vocab.total
    coverage = 100.0 * sum(vocab.counts) / total if total else 100.0
    norm = vocab.normalization
    summary.add_row("size", f"{vocab.size:,} ids ({len(vocab.chars):,} characters + <unk>)")
    summary.add_row("characters counted", f"{total:,}")
    summary.add_row("coverage", f"{coverage:.4f}% of counted characters are in the vocabulary"
                    + (f" ({vocab.unk_count:,} -> <unk>)" if vocab.unk_count else ""))
    summary.add_row("min count", str(vocab.min_count))
    summary.add_row("normalisation", f"lowercase={norm.lowercase} newline={norm.newline} "
                    f"unicode={norm.unicode} strip_bom={norm.strip_bom}")
    summary.add_row("stored as", vocab.dtype.name)

    order = sorted(range(len(vocab.chars)), key=lambda i: (-vocab.counts[i], vocab.chars[i]))
    most, least = order[:top], order[::-1][:top]
    freq = Table(title=f"most and least frequent (of {len(vocab.chars):,})")
    for side in ("most frequent", "least frequent"):
        freq.add_column(side)
        freq.add_column("count", justify="right")
        freq.add_column("share", justify="right")
    for i in range(max(len(most), len(least))):
        row = []
        for pick in (most, least):
            if i < len(pick):
                j = pick[i]
                share = 100.0 * vocab.counts[j] / total if total else 0.0
                row += [printable(vocab.chars[j]), f"{vocab.counts[j]:,}", f"{share:.3f}%"]
            else:
                row += ["", "", ""]
        freq.add_row(*row)
    return [summary, freq]
