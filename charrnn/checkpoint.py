"""Checkpoints: one dict holding everything `sample` and `eval` need, loaded safely.

Saved with `torch.save` through an atomic write; loaded with `weights_only=True`, so a file
that would run code when unpickled is refused, then validated before anything else looks at
it: first the size of its structure (a few kB of pickle can describe billions of nodes
through shared references), then format, version, keys and types, the model settings, and
every weight's name, shape and values (NaN or infinity is refused, naming the tensor), so that
a small file claiming a huge model is refused before anything is allocated. Training state
(optimizer, RNG, data position) lives under its own key and only in `last.pt`, apart from the
weights.

One rule about what a checkpoint says: **paths stored in it are informational only.** Its
config records where the run's text, vocabulary and run directory were, but loading a
checkpoint never makes charrnn read (or write) a path the user did not name on the command
line or in their own config: a checkpoint can come from anyone. `charrnn eval` without a FILE
scores the run directory's own encoded text (idcache.py), never the stored `data.path`.
"""

from __future__ import annotations

import dataclasses
import pickle
import time
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import torch

from charrnn import __version__, devices, fileio, memory, safeload
from charrnn.config import ModelShape, config_from_dict
from charrnn.errors import CheckpointError, ConfigError, VocabError
from charrnn.model import CharRNN, ModelArgs
from charrnn.vocab import Vocab

FORMAT = "charrnn-checkpoint"
VERSION = 1
REQUIRED = ("format", "version", "model_args", "model", "vocab", "step")
BEST, LAST = "best.pt", "last.pt"
_NUMBER_OR_NONE = (int, float, type(None))
_INT_OR_NONE = (int, type(None))
TYPES = {"model_args": dict, "model": dict, "vocab": dict, "step": int, "elapsed": (int, float),
         "val_loss": _NUMBER_OR_NONE, "val_chars": _INT_OR_NONE,
         "best_val_loss": _NUMBER_OR_NONE, "best_val_chars": _INT_OR_NONE, "config": dict,
         "train_state": dict, "torch_version": str, "charrnn_version": str, "saved_at": str}
# How torch's safe unpickler words a refusal of something that would call or build arbitrary
# objects; random or damaged bytes fail otherwise (e.g. "Unsupported operand").
CODE_SIGNS = ("GLOBAL", "call reduce", "Can only create new object", "Can only build")
# What a payload may hold besides its tensors, counting shared references each time they are
# reached: room for the largest vocabulary (every Unicode code point, with its count) and a
# config, far less than a structure built to expand.
MAX_VALUES = 2 * 0x110000 + 100_000
MAX_TEXT = 16 << 20  # characters of text outside the tensors
MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelShape))


def build_payload(model: CharRNN, vocab: Vocab, *, step: int, val_loss: float | None,
                  best_val_loss: float | None, elapsed: float, config: dict,
                  train_state: dict | None = None, val_chars: int | None = None,
                  best_val_chars: int | None = None) -> dict:
    """val_loss: these weights' validation score over val_chars characters; best_val_loss:
    the best score of the run so far, over best_val_chars (periodic evaluations may read
    fewer characters than the final one, and best.pt is chosen among scores over the same)."""
    model = _unwrap(model)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model_args": model.args.to_dict(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "vocab": vocab.to_dict(),
        "step": int(step),
        "val_loss": _float_or_none(val_loss),
        "best_val_loss": _float_or_none(best_val_loss),
        "val_chars": val_chars,
        "best_val_chars": best_val_chars,
        "elapsed": float(elapsed),
        "config": config,
        "torch_version": str(torch.__version__),
        "charrnn_version": __version__,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if train_state is not None:
        payload["train_state"] = train_state
    return payload


def save(payload: dict, path: str | Path, permissions: int | None = None) -> None:
    """Write a checkpoint atomically; `permissions` for a new file (see fileio.atomic_open)."""
    fileio.write_with(path, lambda f: _save_reporting_write_errors(payload, f),
                      permissions=permissions)


def _save_reporting_write_errors(payload: dict, f: BinaryIO) -> None:
    # torch.save turns an exception raised by f.write (disk full, a second Ctrl-C) into a vague
    # RuntimeError ("unexpected pos"); re-raise the original so it is reported for what it is.
    writer = _RecordingWriter(f)
    try:
        torch.save(payload, writer)
    except RuntimeError as exc:
        # The context catches a Ctrl-C that lands in write() before its `try` is entered.
        original = writer.error or exc.__context__
        if isinstance(original, (OSError, KeyboardInterrupt)):
            raise original from None
        raise


class _RecordingWriter:
    """A write-only file that remembers the first exception its writes raised."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.error: BaseException | None = None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except BaseException as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self.f.flush()


def resolve(path: str | Path) -> Path:
    """A checkpoint file, or a run directory meaning its best.pt (else its last.pt)."""
    path = Path(path).expanduser()
    kind = fileio.file_kind(path)
    if kind == "directory":
        for name in (BEST, LAST):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path} holds no checkpoint ({BEST} or {LAST}); train into it "
                              "first with `charrnn train`, or pass a .pt file")
    if kind == "missing":
        raise CheckpointError(f"checkpoint not found: {path}; pass a run directory or a .pt file")
    if kind != "file":
        raise CheckpointError(f"cannot read {path}: it is {kind}, not a regular file; pass a "
                              "run directory or a .pt file")
    return path


def load(path: str | Path, device: torch.device | str = "cpu") -> dict:
    """Read and validate a checkpoint dict (weights on `device`)."""
    path = resolve(path)
    try:
        with warnings.catch_warnings():  # torch's hints about foreign pickles are not for users
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged file can fail anywhere in unpickling
        if isinstance(exc, pickle.UnpicklingError) and any(s in str(exc) for s in CODE_SIGNS):
            raise CheckpointError(f"refusing to load {path}: it holds objects that would run "
                                  "code when unpickled; only load checkpoints charrnn wrote "
                                  "(it is not a charrnn checkpoint)") from None
        if isinstance(exc, PermissionError):  # the file may be whole; it is not ours to read
            raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}; check its "
                                  "permissions") from None
        other = BEST if Path(path).name == LAST else LAST
        raise CheckpointError(f"{path} is damaged, truncated or not a PyTorch file "
                              f"({_failure_reason(exc)}); use another checkpoint, e.g. the "
                              f"run's {other}") from None
    validate(payload, path)
    return payload


def _failure_reason(exc: Exception) -> str:
    """The line of a load failure that says what was wrong, without torch's advice around it."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
    lines = text.splitlines()
    if not lines:
        return type(exc).__name__
    return f"{type(exc).__name__}: {lines[0]}" if isinstance(exc, LookupError) else lines[0]


def validate(payload: Any, path: Path) -> None:
    """Refuse a payload that is not a complete, consistent charrnn checkpoint (see above)."""
    try:  # before anything walks, prints or copies the structure
        safeload.check_size(payload, max_nodes=MAX_VALUES, max_chars=MAX_TEXT, what=str(path))
    except ValueError as exc:
        raise CheckpointError(f"{exc}, far more than a checkpoint holds besides its weights; "
                              "it is not a charrnn checkpoint") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a charrnn checkpoint (written by another program); "
                              "pass a file saved by `charrnn train`")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {payload.get('version')!r}; "
                              f"this charrnn reads version {VERSION}: upgrade charrnn")
    missing = [k for k in REQUIRED if k not in payload]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; it is damaged: use another "
                              "checkpoint")
    wrong = [key for key, kinds in TYPES.items()
             if key in payload and (not isinstance(payload[key], kinds)
                                    or isinstance(payload[key], bool))]
    # Counts past 64 bits are not counts (and would not even print).
    wrong += [key for key in TYPES if type(payload.get(key)) is int and
              not 0 <= payload[key] < 2**63]
    if wrong:
        raise CheckpointError(f"{path} has {', '.join(wrong)} of the wrong type; it is damaged: "
                              "use another checkpoint")
    args = model_args(payload, path)
    check_weights(payload["model"], args, path)


def model_args(payload: dict, path: str | Path = "checkpoint") -> ModelArgs:
    """The stored model settings, each checked as the config checks it (types and bounds)."""
    stored = dict(payload["model_args"])
    missing = [k for k in (*MODEL_FIELDS, "vocab_size") if k not in stored]
    if missing:
        raise CheckpointError(f"{path} lacks model_args {', '.join(map(str, missing))}; it is "
                              "damaged: use another checkpoint")
    vocab_size = stored.pop("vocab_size")
    if type(vocab_size) is not int or not 2 <= vocab_size <= memory.MAX_VOCAB:
        raise CheckpointError(f"{path} has an invalid model_args vocab_size; it is damaged: "
                              "use another checkpoint")
    try:
        section = config_from_dict({"model": stored}, f"{path}").model
    except ConfigError as exc:
        raise CheckpointError(f"{path} has invalid model settings ({'; '.join(exc.problems)}); "
                              "it is damaged: use another checkpoint") from None
    return ModelArgs(vocab_size=vocab_size, **section.shape())


def check_weights(weights: dict, args: ModelArgs, path: str | Path = "checkpoint") -> None:
    """Every weight the model settings call for, and no other: a dense float tensor of the
    right shape holding finite values. Nothing is built or allocated to check it."""
    expected = memory.weight_shapes(args)
    missing = [k for k in expected if k not in weights]
    unexpected = [str(k) for k in weights if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}"
                         f"{' ...' if len(unexpected) > 3 else ''}")
        raise CheckpointError(f"{path}: weights do not match the model settings "
                              f"({'; '.join(parts)}); it was written by another version of "
                              "charrnn or is damaged")
    for name, shape in expected.items():
        weight = weights[name]
        if not (isinstance(weight, torch.Tensor) and weight.layout == torch.strided
                and weight.device.type == "cpu" and weight.is_floating_point()):
            kind = (f"a {weight.dtype} tensor" if isinstance(weight, torch.Tensor)
                    else type(weight).__name__)
            raise CheckpointError(f"{path}: the weight {name} is {kind}, not a tensor of "
                                  "floating-point numbers; it is damaged: use another checkpoint")
        if tuple(weight.shape) != shape:
            raise CheckpointError(f"{path}: weights do not match the model settings ({name} is "
                                  f"{tuple(weight.shape)}, expected {shape}); it was written by "
                                  "another version of charrnn or is damaged")
        if not bool(torch.isfinite(weight).all()):
            raise CheckpointError(f"{path}: the weight {name} holds NaN or infinite values; the "
                                  "checkpoint is damaged or from a run that diverged: use "
                                  "another checkpoint")


def stored_val_fraction(payload: dict, path: str | Path = "checkpoint") -> float:
    """The run's data.val_fraction (a number, checked as the config checks it)."""
    data = payload.get("config", {}).get("data")
    value = data.get("val_fraction") if isinstance(data, dict) else None
    try:
        return config_from_dict({"data": {"val_fraction": value}} if value is not None
                                else {}, str(path)).data.val_fraction
    except ConfigError as exc:
        raise CheckpointError(f"{path} has an invalid config ({'; '.join(exc.problems)}); it "
                              "is damaged: name the text to score") from None


def model_from(payload: dict, path: str | Path = "checkpoint") -> tuple[CharRNN, Vocab]:
    """Rebuild the model and vocabulary stored in a validated checkpoint."""
    try:
        vocab = Vocab.from_dict(payload["vocab"], origin=f"the vocabulary in {path}")
    except VocabError as exc:
        raise CheckpointError(str(exc)) from None
    args = model_args(payload, path)
    if args.vocab_size != vocab.size:
        raise CheckpointError(f"{path}: the model has {args.vocab_size} outputs but its "
                              f"vocabulary has {vocab.size} ids; the checkpoint is inconsistent")
    check_weights(payload["model"], args, path)
    memory.check_model(args, f"the model in {path}", fix="use a machine with more memory")
    # Built on the CPU and overwritten: building on the "meta" device would skip the random
    # initial weights, but makes torch import its compiler (about a second of start-up).
    # Drawing them must not move the global random numbers (a resumed run restores those).
    with torch.random.fork_rng(devices=[]):
        model = CharRNN(args)
    try:
        model.load_state_dict(payload["model"], strict=True, assign=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: weights do not match the model settings "
                              f"({str(exc).splitlines()[0][:200]}); it was written by another "
                              "version of charrnn or is damaged") from None
    return model, vocab


def load_model(path: str | Path, device: torch.device | str = "cpu"
               ) -> tuple[CharRNN, Vocab, dict]:
    """The model (in eval mode, on `device`), vocabulary and payload of a checkpoint or of a
    run directory (its best.pt)."""
    device = devices.named_device(device)
    payload = load(path, device="cpu")
    model, vocab = model_from(payload, resolve(path))
    return model.to(device).eval(), vocab, payload


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    # DistributedDataParallel and torch.compile wrap the model; checkpoints hold the bare one.
    return getattr(model, "module", getattr(model, "_orig_mod", model))


def _float_or_none(x: float | None) -> float | None:
    return None if x is None else float(x)
