"""`charrnn vocab build` and `charrnn vocab show`: count a corpus into a vocabulary, inspect one.

Nothing here imports torch, so both start at once.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from charrnn.cli.common import CommandGroup, handles_errors, out, report_written

app = typer.Typer(cls=CommandGroup, no_args_is_help=True,
                  help="Build and inspect character vocabularies.")


class NewlineMode(str, Enum):
    keep = "keep"
    lf = "lf"


class UnicodeMode(str, Enum):
    keep = "keep"
    nfc = "nfc"
    nfkc = "nfkc"


@app.command("build")
@handles_errors
def build(
    inputs: Annotated[list[str], typer.Argument(
        help="UTF-8 files, directories (read recursively), globs or builtin:NAME.",
        show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the JSON; - "
                                         "is standard output.")] = Path("data/vocab.json"),
    min_count: Annotated[int, typer.Option(
        min=1, help="Characters seen fewer times become <unk>.")] = 1,
    lowercase: Annotated[bool, typer.Option(help="Fold case first.")] = False,
    newline: Annotated[NewlineMode, typer.Option(help="lf: turn CRLF and CR into LF.")]
        = NewlineMode.keep,
    unicode: Annotated[UnicodeMode, typer.Option(help="Unicode normalisation.")]
        = UnicodeMode.keep,
    strip_bom: Annotated[bool, typer.Option(help="Drop a leading byte-order mark.")] = True,
) -> None:
    """Count the characters of a corpus into a vocabulary (JSON)."""
    from charrnn import outputs
    from charrnn.corpus import Normalization, iter_text, resolve_sources, total_bytes
    from charrnn.vocab import Vocab

    sources = resolve_sources(inputs)
    # Before counting: a corpus file named as the output would be replaced by its vocabulary.
    outputs.check_output(output, {s.path: "a corpus file being read" for s in sources if s.path})
    norm = Normalization(lowercase=lowercase, newline=newline.value, unicode=unicode.value,
                         strip_bom=strip_bom)
    vocab = Vocab.build(iter_text(sources, norm), norm, min_count)
    read_bytes = total_bytes(sources)
    outputs.write_output(output, vocab.to_json())
    files = f"{len(sources)} file{'s' if len(sources) != 1 else ''}"
    dropped = f", {vocab.unk_count:,} rare characters -> <unk>" if vocab.unk_count else ""
    kept = len(vocab.chars)
    report_written(output, f"{kept:,} character{'s' if kept != 1 else ''} + <unk> from "
                   f"{vocab.total:,} characters ({files}, {read_bytes:,} bytes){dropped}")


@app.command("show")
@handles_errors
def show(
    vocab_path: Annotated[Path, typer.Argument(metavar="VOCAB", help="A vocab.json file.")],
    top: Annotated[int, typer.Option(min=1, max=0x110000,
                                     help="How many most/least frequent to list.")] = 10,
) -> None:
    """Size, coverage and the most and least frequent characters of a vocabulary."""
    from charrnn.cli.tables import vocab_tables
    from charrnn.vocab import Vocab

    for table in vocab_tables(Vocab.load(vocab_path), top, title=str(vocab_path)):
        out.print(table)
