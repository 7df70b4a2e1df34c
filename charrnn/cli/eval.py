"""`charrnn eval`: score text with a checkpoint, in nats and bits per character."""

from __future__ import annotations

from typing import Annotated

import typer

from charrnn.cli.common import CheckpointOption, DeviceOption, handles_errors, out, warn

MAX_CHARS = 10**12  # of context: more than any text; a window is cut to the text anyway
MAX_STREAMS = 65_536  # segments read at once; what memory holds is checked as well


@handles_errors(memory_hint="lower --streams (1: one sequential pass), or score less text")
def evaluate(
    checkpoint: CheckpointOption,
    files: Annotated[list[str] | None, typer.Argument(
        help="Text to score (default: the run's validation split).", show_default=False)]
        = None,
    window: Annotated[int | None, typer.Option(
        min=1, max=MAX_CHARS, help="Score each character with at most N characters of context "
        "(more than the text holds is the whole text).")] = None,
    streams: Annotated[int | None, typer.Option(
        min=1, max=MAX_STREAMS, help="Parallel segments for the full pass (1: one exact "
        "sequential pass); no more than the text has room for are read.")] = None,
    device: DeviceOption = "auto",
) -> None:
    """Score text: nats and bits per character, perplexity.

    Without FILE, the run's validation split is read from the run directory's encoded text
    (ids.bin), never from the corpus path its checkpoint records.
    """
    from charrnn import checkpoint as checkpoints
    from charrnn.data import encode_files, run_validation_split
    from charrnn.devices import pick_device
    from charrnn.evaluate import check_coverage, score_text

    target = pick_device(device, "--device")
    model, vocab, payload = checkpoints.load_model(checkpoint, target)
    if files:
        ids, unknown = encode_files(files, vocab)
        check_coverage(len(ids), unknown, warn)
    else:
        path = checkpoints.resolve(checkpoint)
        ids = run_validation_split(path.parent, vocab,
                                   checkpoints.stored_val_fraction(payload, path))
    score = score_text(model, ids, target, window=window, streams=streams)
    out.print(score.line())
