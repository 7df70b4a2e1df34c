"""Rich tables of charrnn objects, for `charrnn info` and `charrnn vocab show`.

Every title and cell is a `Text`, never markup: paths, characters and whatever a checkpoint
says are shown as they are (a run in `runs/[draft]` is not a style, `[/]` is not a tag).
A checkpoint's values are shown defensively: it can come from anyone.
"""

from __future__ import annotations

import math
import unicodedata
from pathlib import Path

import yaml
from rich.table import Table
from rich.text import Text

from charrnn.cli.progress import format_duration
from charrnn.errors import CheckpointError, VocabError
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


class _PlainTable(Table):
    """A table whose title and cells are plain text (see above)."""

    def __init__(self, *columns, title: str | None = None, **options):
        super().__init__(*columns, title=None if title is None else Text(title), **options)

    def add_row(self, *cells, **options) -> None:
        super().add_row(*(Text(str(cell)) for cell in cells), **options)


def vocab_tables(vocab: Vocab, top: int, title: str = "vocabulary") -> list[Table]:
    summary = _PlainTable(title=title, show_header=False)
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
    freq = _PlainTable(title=f"most and least frequent (of {len(vocab.chars):,})")
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


def checkpoint_table(payload: dict, path: Path, preview: int = 60) -> Table:
    """What a checkpoint holds, for `charrnn info`: model, vocabulary, progress, config."""
    try:
        vocab = Vocab.from_dict(payload["vocab"], origin=f"the vocabulary in {path}")
    except VocabError as exc:
        raise CheckpointError(str(exc)) from None
    args = payload["model_args"]
    table = _PlainTable(title=str(path), show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("file size", _file_size(path.stat().st_size))
    dropout = args.get("dropout")
    dropout = f", dropout {dropout:g}" if isinstance(dropout, float) and dropout else ""
    table.add_row("model", f"{args.get('cell', '?')}, {args.get('num_layers', '?')} layers x "
                  f"{args.get('hidden_size', '?')} hidden units, "
                  f"{args.get('embedding_dim', '?')}-dim embedding{dropout}")
    parameters = sum(w.numel() for w in payload["model"].values() if hasattr(w, "numel"))
    table.add_row("parameters", f"{parameters:,}")
    table.add_row("vocabulary", f"{vocab.size:,} ids ({len(vocab.chars):,} characters + <unk>)")
    shown = " ".join(printable(c) for c in vocab.chars[:preview])
    more = len(vocab.chars) - preview
    table.add_row("characters", shown + (f" ... and {more:,} more" if more > 0 else ""))
    table.add_row("step", f"{payload['step']:,}")
    elapsed = float(payload.get("elapsed") or 0.0)
    shown = f"{elapsed:.1f} s" if not 60 <= elapsed < math.inf \
        else f"{elapsed:,.0f} s ({format_duration(elapsed)})"
    table.add_row("training time", _flagged(shown, 0 <= elapsed < math.inf))
    for row, loss, chars in (("val loss", "val_loss", "val_chars"),
                             ("best val loss", "best_val_loss", "best_val_chars")):
        nats = payload.get(loss)
        table.add_row(row, _flagged(_loss(nats, payload.get(chars)),
                                    nats is None or 0 <= nats < math.inf))
    table.add_row("resumable", "yes: holds the optimizer and data position"
                  if "train_state" in payload else "no: weights only (use last.pt to resume)")
    table.add_row("saved with", f"torch {payload.get('torch_version', '?')}, charrnn "
                  f"{payload.get('charrnn_version', '?')}")
    table.add_row("saved at", str(payload.get("saved_at", "?")))
    table.add_row("config", _config_text(payload.get("config")))
    return table


def _config_text(config: object) -> str:
    if not config:
        return "(none saved)"
    try:
        return yaml.safe_dump(config, sort_keys=False, allow_unicode=True).rstrip()
    except yaml.YAMLError:  # values YAML cannot represent: not a config charrnn wrote
        return "(unreadable: it holds values that are not plain data)"


def _flagged(text: str, possible: bool) -> str:
    """A value no training writes (a negative time, a NaN loss) said to be one: `info` showed
    a hand-edited or damaged checkpoint's without a word."""
    return text if possible else f"{text} (not a value charrnn writes: the file was edited or " \
        "is damaged)"


def _loss(nats: float | None, chars: int | None = None) -> str:
    if nats is None:
        return "not evaluated"
    over = f", over {chars:,} validation chars" if chars else ""
    return f"{nats:.4f} nats/char ({nats / math.log(2):.4f} bits/char{over})"


def _file_size(size: int) -> str:
    return f"{size / 1e6:,.1f} MB" if size >= 100_000 else f"{size / 1e3:,.1f} kB"
