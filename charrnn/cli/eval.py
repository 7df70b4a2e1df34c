"""`charrnn eval`: score text with a checkpoint, in nats and bits per character."""

from __future__ import annotations

from typing import Annotated

import typer

from charrnn.cli.common import CheckpointOption, DeviceOption, handles_errors, out, warn


@handles_errors
def evaluate(
    checkpoint: CheckpointOption,
    files: Annotated[list[str] | None, typer.Argument(
        help="Text to score (default: the run's validation split).", show_default=False)]
        = None,
    window: Annotated[int | None, typer.Option(
        min=1, help="Score each character with at most N characters of context.")] = None,
    streams: Annotated[int | None, typer.Option(
        min=1, help="Parallel segments for the full pass (1: one exact sequential pass).")]
        = None,
    device: DeviceOption = "auto",
) -> None:
    """Score text: nats and bits per character, perplexity."""
    from charrnn import checkpoint as checkpoints
    from charrnn.config import config_from_dict
    from charrnn.data import encode_files, load_dataset
    from charrnn.devices import pick_device
    from charrnn.evaluate import check_coverage, score_text

    target = pick_device(device, "--device")
    model, vocab, payload = checkpoints.load_model(checkpoint, target)
    if files:
        ids, unknown = encode_files(files, vocab)
        check_coverage(len(ids), unknown, warn)
    else:
        config = config_from_dict(payload.get("config") or {}, "the checkpoint's config")
        run_dir = checkpoints.resolve(checkpoint).parent
        ids = load_dataset(config.data, run_dir, vocab, warn=warn).val
    score = score_text(model, ids, target, window=window, streams=streams)
    out.print(score.line())
