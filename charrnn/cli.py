"""The `charrnn` command line: parse, hand off to the library, print.

Heavy modules (torch above all) are imported inside the commands that need them, so
`charrnn --help` and `charrnn vocab build` start instantly. Every `CharRNNError` becomes one
red `error: ...` line on stderr and its exit code (1 runtime, 2 usage); no traceback.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from charrnn import __version__, errors
from charrnn.cli_common import CommandGroup, err, handles_errors, out, speaks_for_the_run
from charrnn.cli_data import data_app

app = typer.Typer(cls=CommandGroup, no_args_is_help=True, rich_markup_mode="rich",
                  pretty_exceptions_enable=False, context_settings={"help_option_names":
                                                                    ["-h", "--help"]},
                  help="Character-level RNN/LSTM/GRU language models: build a vocabulary, "
                       "train from a YAML config, sample text.")
vocab_app = typer.Typer(cls=CommandGroup, no_args_is_help=True,
                        help="Build and inspect character vocabularies.")
app.add_typer(vocab_app, name="vocab")
app.add_typer(data_app, name="data")


def _version(value: bool) -> None:
    if value:
        out.print(f"charrnn {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Show the version and exit.")]
        = False) -> None:
    """Character-level RNN/LSTM/GRU language models."""


# ---- vocab ----------------------------------------------------------------------------------
class NewlineMode(str, Enum):
    keep = "keep"
    lf = "lf"


class UnicodeMode(str, Enum):
    keep = "keep"
    nfc = "nfc"
    nfkc = "nfkc"


@vocab_app.command("build")
@handles_errors
def vocab_build(
    inputs: Annotated[list[str], typer.Argument(
        help="UTF-8 files, directories (read recursively), globs or builtin:NAME.",
        show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the JSON.")]
        = Path("data/vocab.json"),
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
    from charrnn.corpus import Normalization, iter_text, resolve_sources, total_bytes
    from charrnn.vocab import Vocab

    sources = resolve_sources(inputs)
    norm = Normalization(lowercase=lowercase, newline=newline.value, unicode=unicode.value,
                         strip_bom=strip_bom)
    vocab = Vocab.build(iter_text(sources, norm), norm, min_count)
    vocab.save(output)
    files = f"{len(sources)} file{'s' if len(sources) != 1 else ''}"
    dropped = f", {vocab.unk_count:,} rare characters -> <unk>" if vocab.unk_count else ""
    out.print(f"wrote {output}: {len(vocab.chars):,} characters + <unk> from "
              f"{vocab.total:,} characters ({files}, {total_bytes(sources):,} bytes){dropped}")


@vocab_app.command("show")
@handles_errors
def vocab_show(
    vocab_path: Annotated[Path, typer.Argument(metavar="VOCAB", help="A vocab.json file.")],
    top: Annotated[int, typer.Option(min=1, help="How many most/least frequent to list.")] = 10,
) -> None:
    """Size, coverage and the most and least frequent characters of a vocabulary."""
    from charrnn.report import vocab_tables
    from charrnn.vocab import Vocab

    for table in vocab_tables(Vocab.load(vocab_path), top, title=str(vocab_path)):
        out.print(table)


# ---- train ----------------------------------------------------------------------------------
@app.command()
@handles_errors
def train(
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="YAML config (see configs/).", show_default=False)] = None,
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", metavar="SECTION.KEY=VALUE",
        help="Override a config key, value parsed as YAML; repeatable.")] = None,
    resume: Annotated[str | None, typer.Option(
        "--resume", metavar="[RUN_DIR]", show_default=False,
        help="Continue from last.pt of RUN_DIR (alone: the config's train.out_dir).")] = None,
    overwrite: Annotated[bool, typer.Option(
        help="Start over in a run directory that already holds a run.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the final result.")]
        = False,
) -> None:
    """Train a model as a YAML config says; checkpoints and metrics go to train.out_dir.

    On several GPUs or machines, start it with torchrun: `torchrun --nproc_per_node=N -m
    charrnn train ...`; data.batch_size is then the total over all processes.
    """
    from charrnn.config import load_config
    from charrnn.train import saved_config
    from charrnn.train import train as run_training

    resume_target: bool | str = False
    if resume is not None:
        resume_target = resume or True
    if config is None and isinstance(resume_target, str):
        cfg = saved_config(resume_target)
        if overrides:
            cfg = load_config(Path(resume_target) / "config.yaml", overrides)
    else:
        cfg = load_config(config, overrides)
    result = run_training(cfg, resume=resume_target, overwrite=overwrite, console=out,
                          quiet=quiet)
    if not speaks_for_the_run():
        return
    final = f"; val {result.final.line()}" if result.final is not None else ""
    out.print(f"[bold green]done[/]: {result.step:,} steps in {result.elapsed:.0f} s{final}; "
              f"checkpoints in {result.run_dir}. Sample with: charrnn sample "
              f"--checkpoint {result.run_dir}")


# ---- sample ---------------------------------------------------------------------------------
class OutputFormat(str, Enum):
    text = "text"
    json = "json"


@app.command()
@handles_errors
def sample(
    checkpoint: Annotated[Path, typer.Option(
        "--checkpoint", "-k", help="A run directory (its best.pt) or a .pt file.",
        show_default=False)],
    temperature: Annotated[str, typer.Option(
        "--temperature", "-t", help="Randomness: >0 scales logits, 0 is greedy. Several, "
        "comma-separated (0.2,0.5,1.0), give one labelled sample each.")] = "1.0",
    length: Annotated[int, typer.Option("--length", "-n",
                                        help="Characters to generate (prime not counted).")]
        = 500,
    prime: Annotated[str, typer.Option("--prime", "-p", help="Text to start from.")] = "",
    seed: Annotated[int | None, typer.Option(help="Same seed, same text.")] = None,
    top_k: Annotated[int | None, typer.Option(help="Sample among the k most likely.")] = None,
    top_p: Annotated[float | None, typer.Option(
        help="Sample among the most likely characters whose probabilities add up to p "
             "(0 < p <= 1).")] = None,
    stop: Annotated[str | None, typer.Option(
        metavar="TEXT", help="End each sample at the first TEXT after the prime (TEXT kept); "
        "\\n and \\t are understood, so '\\n\\n' stops at a blank line.")] = None,
    num_samples: Annotated[int, typer.Option("--num-samples", "-N",
                                             help="Samples, drawn as one batch.")] = 1,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", metavar="FILE", dir_okay=False, show_default=False,
        help="Write the samples to FILE (whole, once all are done) instead of printing them.")]
        = None,
    output_format: Annotated[OutputFormat, typer.Option(
        "--format", help="text, or json: a list of {temperature, prime, text, logprobs}, "
        "logprobs being each generated character's natural-log probability (nats).")]
        = OutputFormat.text,
    interactive: Annotated[bool, typer.Option(
        "--interactive", "-i", help="Continue each line typed (or piped) in; an empty line "
        "starts from scratch; Ctrl-D or end of input quits.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
) -> None:
    """Generate text from a trained model."""
    from charrnn.sample_output import SampleRequest, run_sample

    if interactive and (prime or output is not None):
        raise errors.UsageError("--interactive takes each prime from the prompt and prints "
                                "the replies; leave out --prime and --output")
    run_sample(SampleRequest(
        checkpoint=checkpoint, temperatures=temperature, length=length, prime=prime, seed=seed,
        top_k=top_k, top_p=top_p, stop=stop, num_samples=num_samples, output=output,
        as_json=output_format is OutputFormat.json, interactive=interactive, device=device))


# ---- eval -----------------------------------------------------------------------------------
@app.command("eval")
@handles_errors
def evaluate(
    checkpoint: Annotated[Path, typer.Option(
        "--checkpoint", "-k", help="A run directory (its best.pt) or a .pt file.",
        show_default=False)],
    files: Annotated[list[str] | None, typer.Argument(
        help="Text to score (default: the run's validation split).", show_default=False)]
        = None,
    window: Annotated[int | None, typer.Option(
        min=1, help="Score each character with at most N characters of context.")] = None,
    streams: Annotated[int | None, typer.Option(
        min=1, help="Parallel segments for the full pass (1: one exact sequential pass).")]
        = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
) -> None:
    """Score text: nats and bits per character, perplexity."""
    from charrnn.evaluate import score_checkpoint

    score = score_checkpoint(checkpoint, files or [], window=window, streams=streams,
                             device=device, say=lambda m: err.print(m))
    out.print(score.line())


# ---- info and plot --------------------------------------------------------------------------
@app.command()
@handles_errors
def info(
    checkpoint: Annotated[Path, typer.Argument(
        metavar="CHECKPOINT", help="A run directory (its best.pt) or a .pt file.",
        show_default=False)],
) -> None:
    """What a checkpoint holds: model, vocabulary, progress, losses, config, versions."""
    from charrnn.checkpoint import load, resolve
    from charrnn.report import checkpoint_table

    path = resolve(checkpoint)
    out.print(checkpoint_table(load(path), path))


@app.command()
@handles_errors
def plot(
    run_dirs: Annotated[list[Path], typer.Argument(
        metavar="RUN_DIR", help="Run directories (their metrics.jsonl); several are "
        "compared in one figure.", show_default=False)],
    output: Annotated[Path, typer.Option(
        "--output", "-o", dir_okay=False, help="Image to write; .png, .svg or .pdf.")]
        = Path("loss.png"),
    width: Annotated[int, typer.Option(min=300, help="Image width in pixels.")] = 1200,
    height: Annotated[int, typer.Option(min=200, help="Image height in pixels.")] = 800,
) -> None:
    """Loss (nats and bits per char) and learning rate against step and wall time."""
    from charrnn.plot import plot_runs

    plot_runs(run_dirs, output, width=width, height=height)
    out.print(f"wrote {output}")


def main() -> None:
    app(prog_name="charrnn")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
