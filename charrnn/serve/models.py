"""The models a server holds: each checkpoint loaded once, named, with its own engine."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from charrnn.errors import UsageError
from charrnn.serve.engine import Engine

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass
class ServedModel:
    name: str
    engine: Engine
    info: dict  # what GET /v1/models says about it


def parse_model_spec(spec: str) -> tuple[str, Path]:
    """'RUN' or 'NAME=RUN' -> (name, path); the name defaults to the run directory's name."""
    name, sep, rest = spec.partition("=")
    if sep and not Path(spec).exists():
        if _NAME.fullmatch(name):
            return name, Path(rest)
        if Path(rest).exists():  # it was said "checkpoint not found" of the whole spec
            raise UsageError(f"model name {name!r} is not allowed: use up to 64 letters, "
                             "digits, _ . and -, starting with a letter or digit")
    path = Path(spec)
    # runs/shakespeare and runs/shakespeare/best.pt are both "shakespeare".
    stem = path.parent.name if path.suffix == ".pt" and path.stem in ("best", "last") \
        else path.stem if path.suffix == ".pt" else path.name
    return _as_name(stem, spec), path


def _as_name(text: str, spec: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "model"
    if not _NAME.fullmatch(name):
        raise UsageError(f"cannot make a model name of {spec!r}; name it: -k NAME={spec}")
    return name


def load_models(specs: list[str], device: str = "auto", *,
                max_streams: int = 64, max_queue: int = 256, max_length: int = 10_000,
                threads: int | None = None) -> dict[str, ServedModel]:
    """Load each checkpoint (-k RUN or -k NAME=RUN) and start its engine (`threads`: see
    Engine); the first is the default model."""
    from charrnn.checkpoint import load_model
    from charrnn.devices import pick_device
    from charrnn.sample import Sampler

    if not specs:
        raise UsageError("give at least one checkpoint: --checkpoint RUN (or NAME=RUN)")
    named = [parse_model_spec(spec) for spec in specs]
    names = [name for name, _ in named]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"two checkpoints are named {', '.join(twice)}; name them apart: "
                         "-k NAME=RUN")
    target = pick_device(device, "--device")
    loaded = [(name, path, *load_model(path, target)) for name, path in named]
    models: dict[str, ServedModel] = {}
    try:
        for name, path, model, vocab, payload in loaded:
            engine = Engine(Sampler(model, vocab, target), max_streams=max_streams,
                            max_queue=max_queue, max_length=max_length, name=name,
                            threads=threads).start()
            args = model.args
            models[name] = ServedModel(name, engine, {
                "name": name, "checkpoint": str(path), "cell": args.cell,
                "num_layers": args.num_layers, "hidden_size": args.hidden_size,
                "embedding_dim": args.embedding_dim, "parameters": model.num_parameters(),
                "vocab_size": vocab.size, "step": payload.get("step"),
                "best_val_loss": payload.get("best_val_loss"), "device": str(target)})
    except BaseException:
        close_models(models)
        raise
    return models


def close_models(models: dict[str, ServedModel]) -> None:
    for served in models.values():
        served.engine.close()
