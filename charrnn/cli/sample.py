"""`charrnn sample`: generate text from a trained model, streamed to the terminal, to a file,
as JSON, or in an interactive loop. The sampling itself is the library's (sample.py); this
module parses the options and writes the results.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from charrnn.cli.common import (
    CheckpointOption,
    DeviceOption,
    handles_errors,
    out,
    report,
    report_written,
)
from charrnn.errors import CharRNNError, UsageError

MAX_LENGTH = 100_000_000  # characters per sample: hours of generation already
MAX_SAMPLES = 100_000  # drawn as one batch
MAX_SEED = 2**64 - 1  # as charrnn.sample.MAX_SEED (not imported here: it imports torch)
MAX_BEAM = 1024  # beams kept at every step: each one is a stream
# Bytes per generated character kept until the end: as str pieces, and for JSON with its
# log-probability as a Python float in a list.
HELD_TEXT, HELD_JSON = 16, 64


class OutputFormat(str, Enum):
    text = "text"
    json = "json"


@handles_errors(memory_hint="lower --num-samples or --length, or use a shorter --prime")
def sample(
    checkpoint: CheckpointOption,
    temperature: Annotated[str, typer.Option(
        "--temperature", "-t", help="Randomness: >0 scales logits, 0 is greedy. Several, "
        "comma-separated (0.2,0.5,1.0), give one labelled sample each.")] = "1.0",
    length: Annotated[int, typer.Option("--length", "-n", min=0, max=MAX_LENGTH,
                                        help="Characters to generate (prime not counted).")]
        = 500,
    prime: Annotated[str, typer.Option("--prime", "-p", help="Text to start from.")] = "",
    prime_file: Annotated[Path | None, typer.Option(
        "--prime-file", metavar="FILE", show_default=False,
        help="Start from the text in FILE (UTF-8, any number of lines) instead of --prime.")]
        = None,
    seed: Annotated[int | None, typer.Option(min=0, max=MAX_SEED,
                                             help="Same seed, same text.")] = None,
    top_k: Annotated[int | None, typer.Option(min=1, help="Sample among the k most likely.")]
        = None,
    top_p: Annotated[float | None, typer.Option(
        help="Sample among the most likely characters whose probabilities add up to p "
             "(0 < p <= 1).")] = None,
    stop: Annotated[str | None, typer.Option(
        metavar="TEXT", help="End each sample at the first TEXT after the prime (TEXT kept); "
        "\\n and \\t are understood, so '\\n\\n' stops at a blank line.")] = None,
    num_samples: Annotated[int, typer.Option("--num-samples", "-N", min=1, max=MAX_SAMPLES,
                                             help="Samples, drawn as one batch.")] = 1,
    beam: Annotated[int | None, typer.Option(
        min=1, max=MAX_BEAM, metavar="N", show_default=False,
        help="Beam search with N beams: the most probable continuation under the model "
             "(with -N K: the K best), deterministic; no temperature, top-k or top-p.")]
        = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", metavar="FILE", dir_okay=False, show_default=False,
        help="Write the samples to FILE (whole, once all are done) instead of printing them; "
             "- is standard output.")]
        = None,
    output_format: Annotated[OutputFormat, typer.Option(
        "--format", help="text, or json: a list of {temperature, prime, text, logprobs}, "
        "logprobs being each generated character's natural-log probability (nats).")]
        = OutputFormat.text,
    interactive: Annotated[bool, typer.Option(
        "--interactive", "-i", help="Continue each line typed (or piped) in; an empty line "
        "starts from scratch; Ctrl-D or end of input quits.")] = False,
    device: DeviceOption = "auto",
) -> None:
    """Generate text from a trained model."""
    from charrnn.sample import read_prime_file

    if interactive and (prime or prime_file or output is not None):
        raise UsageError("--interactive takes each prime from the prompt and prints the "
                         "replies; leave out --prime, --prime-file and --output")
    if prime_file is not None:
        if prime:
            raise UsageError("give the prime once: --prime TEXT or --prime-file FILE")
        prime = read_prime_file(prime_file)
    run_sample(SampleRequest(
        checkpoint=checkpoint, temperatures=temperature, length=length, prime=prime, seed=seed,
        top_k=top_k, top_p=top_p, stop=stop, num_samples=num_samples, beam=beam, output=output,
        as_json=output_format is OutputFormat.json, interactive=interactive, device=device,
        prime_file=prime_file))


@dataclass(frozen=True)
class SampleRequest:
    """What the user asked `charrnn sample` for, as parsed from the command line."""

    checkpoint: Path
    temperatures: str  # one value or a comma-separated list, parsed and checked here
    length: int
    prime: str
    seed: int | None
    top_k: int | None
    top_p: float | None
    stop: str | None
    num_samples: int
    beam: int | None
    output: Path | None
    as_json: bool
    interactive: bool
    device: str
    prime_file: Path | None = None  # where the prime was read from, if from a file


def _files_read(request: SampleRequest) -> dict[Path, str]:
    """The files `charrnn sample` reads, which its output must not replace: the checkpoint,
    its run's other checkpoints, configuration and vocabulary, and the prime's file."""
    from charrnn import checkpoint

    chosen = checkpoint.resolve(request.checkpoint)
    reads = {run_file: "a file of the run being read" for run_file in chosen.parent.iterdir()
             if run_file.suffix == ".pt" or run_file.name in ("config.yaml", "vocab.json")}
    reads[chosen] = "the checkpoint being read"
    if request.prime_file is not None:
        reads[request.prime_file] = "the file the prime is read from"
    return reads


def run_sample(request: SampleRequest) -> None:
    from charrnn import outputs
    from charrnn.checkpoint import load_model
    from charrnn.devices import pick_device
    from charrnn.sample import Sampler, SampleSettings, parse_stop, parse_temperatures

    temperatures = parse_temperatures(request.temperatures)
    if request.output is not None:  # before any work: a bad output would lose all of it
        outputs.check_output(request.output, _files_read(request))
    if request.interactive and sys.stdin is None:
        raise UsageError("--interactive reads lines from standard input, which is closed; "
                         "pipe text in or run it in a terminal")
    target = pick_device(request.device, "--device")
    model, vocab, _ = load_model(request.checkpoint, target)
    sampler = Sampler(model, vocab, target)
    runs = [SampleSettings(length=request.length, temperature=temp, top_k=request.top_k,
                           top_p=request.top_p, num_samples=request.num_samples,
                           seed=request.seed, beam=request.beam) for temp in temperatures]
    for settings in runs:
        settings.validate(vocab)
    stop = sampler.prepare_stop(parse_stop(request.stop)) if request.stop is not None else None
    if request.interactive:
        _sample_interactively(sampler, runs, stop, request.as_json, target)
        return
    prime = request.prime
    if request.prime_file is not None and vocab.unknown_chars(vocab.normalize("\r")):
        # A file's CRLF line endings (an editor's choice, not the text's) for a model that
        # never writes \r; a model trained on CRLF text gets them as they are.
        prime = prime.replace("\r\n", "\n").replace("\r", "\n")
    sampler.encode_prime(prime)  # reject unknown prime characters before printing anything
    to_file = request.output is not None
    _check_memory(model, runs, prime, request.as_json, to_file, target)
    if not to_file:
        _emit(sampler, runs, prime, stop, request.as_json, _write_stdout, _print_label)
        return
    parts: list[str] = []
    count = _emit(sampler, runs, prime, stop, request.as_json, parts.append,
                  lambda label: parts.append(label + "\n"))
    outputs.write_output(request.output, "".join(parts))
    report_written(request.output, f"{count} sample{'s' if count != 1 else ''} "
                   f"({'json' if request.as_json else 'text'})")


def _check_memory(model, runs, prime: str, as_json: bool, to_file: bool, device) -> None:
    """Refuse a batch of samples the machine cannot hold before drawing any."""
    from charrnn import memory
    from charrnn.sample import PRIME_PIECE

    count, length = runs[0].num_samples, runs[0].length
    # A lone text sample streams out; a batch is kept until it is written, and a file or JSON
    # until every temperature's samples are done. The text is in host memory on any device.
    streamed = not (to_file or as_json or count > 1)
    per_char = 0 if streamed else (HELD_JSON if as_json else HELD_TEXT)
    need = count * length * per_char * (len(runs) if to_file or as_json else 1)
    if device.type == "cpu":  # elsewhere the model's work is in device memory
        need += memory.sampling_bytes(model.args, count, min(len(prime), PRIME_PIECE))
    memory.check_fits(need, f"{count:,} sample{'s' if count > 1 else ''} of {length:,} "
                      "characters", "lower --num-samples or --length, or use a shorter --prime")


def _emit(sampler, runs, prime: str, stop: str | None, as_json: bool, write, write_label,
          one_line: bool = False) -> int:
    """Write the samples as text or JSON and count them; a lone text sample streams."""
    from charrnn.sample import samples_json

    if as_json:
        samples = [s for settings in runs
                   for s in sampler.samples(settings, prime, stop, with_logprobs=True)]
        write(samples_json(samples, one_line))
        return len(samples)
    count = 0
    for label, pieces in _text_blocks(sampler, runs, prime, stop):
        if label:
            write_label(label)
        last = ""
        for piece in pieces:
            write(piece)
            last = piece[-1:] or last
        if last != "\n":  # end each sample with a line break, without doubling its own
            write("\n")
        count += 1
    return count


def _text_blocks(sampler, runs, prime: str, stop: str | None):
    """(label or None, pieces of text) for each sample, labelled when there are several."""
    for settings in runs:
        count, temp = settings.num_samples, settings.temperature
        if count == 1:
            label = f"--- temperature {temp:g} ---" if len(runs) > 1 else None
            chunks = sampler.stream(settings, prime, stop)
            yield label, itertools.chain([prime], (chunk.texts[0] for chunk in chunks))
            continue
        which = f"temperature {temp:g}, " if len(runs) > 1 else ""
        for index, drawn in enumerate(sampler.samples(settings, prime, stop), start=1):
            yield f"--- {which}sample {index}/{count} ---", [prime + drawn.text]


def _read_line(prompt: str, most: int) -> tuple[str, int]:
    """The next line of standard input (EOFError at its end) and its length. From a pipe it
    is read `most` characters at a time, and a longer line is counted, not kept: a 500 MB
    line held 1.2 GB before it was refused, and /dev/zero all of memory."""
    if prompt:  # a terminal: input() gives line editing and history
        line = input(prompt).rstrip("\r")
        return line, len(line)
    line = sys.stdin.readline(most + 1)
    if not line:
        raise EOFError
    length = len(line)
    while length > most and not line.endswith("\n"):
        line = sys.stdin.readline(most + 1)
        if not line:
            break
        length += len(line)
    text = line.rstrip("\n").rstrip("\r") if length <= most + 1 else ""
    return text, length - line.endswith("\n")


def _write_stdout(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()  # streamed text shows as it is generated


def _print_label(label: str) -> None:
    out.print(label, style="bold")


def _sample_interactively(sampler, runs, stop: str | None, as_json: bool, device) -> None:
    """Continue each line read from stdin until end of input, the model staying loaded.

    A bad line is reported and the session goes on; read from a pipe or file, the command then
    ends with status 1, so that a script sees that some lines were not continued."""
    from charrnn.sample import MAX_PRIME_BYTES

    if getattr(sys.stdin, "errors", None) in ("strict", "surrogateescape"):
        # Bytes that are not UTF-8 become U+FFFD, which the prime check then reports (under
        # a C.UTF-8 locale they were surrogates, named as characters the model lacks).
        with contextlib.suppress(AttributeError, ValueError, OSError):
            sys.stdin.reconfigure(errors="replace")
    prompt = ""
    if sys.stdin.isatty():
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401 - gives input() line editing and history
        prompt = "> "
        out.print("Type text for the model to continue; an empty line starts from scratch; "
                  "Ctrl-D quits.", style="dim")
    lines = failed = 0
    while True:
        try:
            line, length = _read_line(prompt, MAX_PRIME_BYTES)
        except EOFError:
            break
        except OSError as exc:
            raise CharRNNError(f"cannot read standard input: {exc.strerror or exc}") from None
        lines += 1
        try:
            if length > MAX_PRIME_BYTES:  # as --prime-file: a prime is a text's start
                raise UsageError(f"a line of {length:,} characters is too long a prime "
                                 f"(at most {MAX_PRIME_BYTES:,}); use its last part")
            sampler.encode_prime(line)
            _check_memory(sampler.model, runs, line, as_json, False, device)
            _emit(sampler, runs, line, stop, as_json, _write_stdout, _print_label,
                  one_line=True)
        except CharRNNError as exc:  # a bad line is reported; the session goes on
            report(exc)
            failed += 1
        except KeyboardInterrupt:  # Ctrl-C ends this reply, not the session
            sys.stdout.write("\n")
    if prompt:
        sys.stdout.write("\n")  # Ctrl-D leaves the cursor after the prompt
    elif failed:
        raise CharRNNError(f"{failed} of {lines} input line{'s' if lines != 1 else ''} could "
                           "not be continued (see above)")
