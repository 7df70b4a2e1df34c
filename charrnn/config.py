"""Run configuration: frozen dataclasses read from YAML, with `--set key=value` overrides.

Every problem (unknown key, wrong type, value out of range) is collected and reported
together, each naming its key, as one `ConfigError`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from charrnn.errors import ConfigError, UsageError


def _opt(default: Any, help: str, *, min: float | None = None, max: float | None = None,
         min_exclusive: bool = False, max_exclusive: bool = False,
         choices: tuple | None = None) -> Any:
    """A config field with its documentation and the range the validator enforces."""
    meta = {"help": help, "min": min, "max": max, "min_exclusive": min_exclusive,
            "max_exclusive": max_exclusive, "choices": choices}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DataConfig:
    path: str = _opt("builtin:python-docs",
                     "training text: a file, a directory (recursive), a glob or builtin:NAME")
    vocab: str | None = _opt(None, "vocab.json to use; built from the training text when null")
    val_fraction: float = _opt(0.1, "the last fraction of the text, held out for validation",
                               min=0.0, max=0.5, min_exclusive=True)
    seq_len: int = _opt(64, "characters per training window (truncated-BPTT length)", min=1)
    batch_size: int = _opt(16, "parallel streams (windows) per step, in all: under torchrun "
                           "the processes split them evenly (a multiple of their number)", min=1)
    batching: str = _opt("stream", "stream: contiguous streams carrying hidden state between "
                         "steps; random: independent random windows", choices=("stream", "random"))
    reset_every: int = _opt(2048, "stream batching: zero a stream's hidden state at random, "
                            "on average every N characters, so the model learns to start "
                            "from a blank state as sampling does (0: only at epoch starts)",
                            min=0)
    separator: str = _opt("", "text put between documents when several files are read")
    lowercase: bool | None = _opt(None, "fold case (null: as the vocab says, else false)")
    newline: str | None = _opt(None, "keep | lf: turn CRLF/CR into LF (null: as the vocab says, "
                               "else keep)", choices=("keep", "lf", None))
    unicode: str | None = _opt(None, "keep | nfc | nfkc normalisation (null: as the vocab says, "
                               "else keep)", choices=("keep", "nfc", "nfkc", None))
    strip_bom: bool | None = _opt(None, "drop a leading byte-order mark (null: as the vocab says, "
                                  "else true)")
    min_count: int = _opt(1, "characters seen fewer times become <unk> when building the vocab",
                          min=1)
    unknown: str = _opt("warn", "characters the vocab lacks: warn (map to <unk>) or error",
                        choices=("warn", "error"))


@dataclass(frozen=True)
class ModelConfig:
    cell: str = _opt("lstm", "recurrent cell", choices=("rnn", "lstm", "gru"))
    embedding_dim: int = _opt(64, "size of each character's learned vector", min=1)
    hidden_size: int = _opt(512, "units per recurrent layer", min=1)
    num_layers: int = _opt(1, "stacked recurrent layers", min=1)
    dropout: float = _opt(0.1, "dropout on the embedding, between layers and before the output",
                          min=0.0, max=1.0, max_exclusive=True)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = _opt(4e-3, "peak AdamW learning rate", min=0.0, min_exclusive=True)
    weight_decay: float = _opt(0.1, "AdamW decoupled weight decay (matrices only)", min=0.0)
    beta1: float = _opt(0.9, "AdamW beta1", min=0.0, max=1.0)
    beta2: float = _opt(0.99, "AdamW beta2", min=0.0, max=1.0)
    grad_clip: float = _opt(1.0, "clip the global gradient norm to this (0: off)", min=0.0)
    schedule: str = _opt("cosine", "constant | cosine (decay to min_lr) | linear",
                         choices=("constant", "cosine", "linear"))
    warmup: float = _opt(0.02, "fraction of the budget (steps or time) spent warming up the lr",
                         min=0.0, max=1.0)
    min_lr: float = _opt(1e-4, "lr at the end of the decay", min=0.0)


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int | None = _opt(2000, "stop after this many steps (null: no step limit)", min=1)
    max_time: float | None = _opt(None, "stop after this many seconds of training (null: none)",
                                  min=0.0, min_exclusive=True)
    eval_every: int = _opt(500, "evaluate on the validation split every N steps (0: only at "
                           "the end)", min=0)
    eval_chars: int | None = _opt(None, "score only the first N validation characters in "
                                  "periodic evaluations (null: all of them)", min=1)
    final_eval_chars: int | None = _opt(None, "score only the first N validation characters "
                                        "in the final evaluation (null: all of them)", min=1)
    log_every: int = _opt(50, "log train loss and speed every N steps", min=1)
    out_dir: str = _opt("runs/default", "run directory: checkpoints, metrics, config, caches")
    seed: int = _opt(1337, "random seed for weights, data order and dropout")
    device: str = _opt("auto", "auto picks cuda, then mps, then cpu",
                       choices=("auto", "cpu", "cuda", "mps"))
    precision: str = _opt("auto", "auto: bf16 autocast where the hardware is fast at it, "
                          "else fp32", choices=("auto", "fp32", "bf16"))
    threads: int | None = _opt(None, "CPU threads for torch (null: all cores)", min=1)
    init_from: str | None = _opt(None, "start from this checkpoint's weights (fine-tuning)")
    keep_last: int = _opt(0, "also keep the K most recent step checkpoints", min=0)
    save_every_time: float | None = _opt(None, "also write last.pt every N seconds of training, "
                                         "so a hard kill loses at most that much (null: only "
                                         "at evaluations)", min=0.0, min_exclusive=True)
    preempt_grace: float = _opt(30.0, "seconds a stop signal (SIGTERM, SIGUSR1, Ctrl-C) leaves "
                                "to save last.pt; past them the process exits without it",
                                min=0.0, min_exclusive=True)
    sample_every: int = _opt(0, "print a short sample every N evaluations (0: never)", min=0)
    sample_length: int = _opt(200, "characters per training-time sample", min=1)
    tensorboard: bool = _opt(False, "also log to TensorBoard (needs the tensorboard package)")


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def replace(self, **sections: dict) -> Config:
        """A copy with some fields changed, e.g. replace(train={"max_steps": 5})."""
        updated = {name: dataclasses.replace(getattr(self, name), **values)
                   for name, values in sections.items()}
        return dataclasses.replace(self, **updated)


_SECTION_CLASSES = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig,
                    "train": TrainConfig}


# ---- loading ----------------------------------------------------------------------------
def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults), apply `section.key=value` overrides, validate."""
    raw: dict = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        raw = read_yaml_mapping(path)
    overridden = set()
    for override in overrides or []:
        section, key, value = parse_override(override)
        overridden.add(f"{section}.{key}")
        if not isinstance(raw.get(section), dict):
            raw[section] = {} if raw.get(section) is None else raw[section]
        if isinstance(raw[section], dict):
            raw[section][key] = value
    try:
        return config_from_dict(raw, source)
    except ConfigError as exc:
        # Say which problems came from the command line rather than from the file.
        raise ConfigError([_mark_override(p, overridden) for p in exc.problems],
                          exc.source) from None


def _mark_override(problem: str, overridden: set[str]) -> str:
    named = re.search(r"'([a-z_]+\.[a-z_0-9]+)'", problem)
    return f"{problem} (from --set)" if named and named.group(1) in overridden else problem


def read_yaml_mapping(path: Path) -> dict:
    if not path.is_file():
        raise UsageError(f"config file not found: {path}; see configs/ for examples")
    try:
        text = path.read_text(encoding="utf-8")
        raw = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read config {path}: {exc}") from None
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or "invalid syntax"
        raise UsageError(f"{path} is not valid YAML{where}: {problem}; fix the syntax") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UsageError(f"{path} must be a YAML mapping with sections data, model, optim, "
                         f"train (it holds a {type(raw).__name__})")
    return raw


def parse_override(text: str) -> tuple[str, str, Any]:
    """'model.hidden_size=512' -> ('model', 'hidden_size', 512); the value is parsed as YAML."""
    name, sep, value = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not section or not key or "." in key:
        raise UsageError(f"malformed --set {text!r}; write SECTION.KEY=VALUE, "
                         "e.g. --set model.hidden_size=512")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value  # a plain string such as 'a: b' that is not valid YAML on its own
    return section, key, parsed


def config_from_dict(raw: dict, source: str = "config") -> Config:
    problems: list[str] = []
    sections = {}
    for name in raw:
        if name not in _SECTION_CLASSES:
            problems.append(f"unknown section '{name}' (sections: {', '.join(_SECTION_CLASSES)})")
    for name, cls in _SECTION_CLASSES.items():
        values = raw.get(name) or {}
        if not isinstance(values, dict):
            problems.append(f"'{name}' must be a mapping of keys to values")
            values = {}
        sections[name] = _build_section(name, cls, values, problems)
    if not problems:
        problems.extend(_cross_checks(sections))
    if problems:
        raise ConfigError(problems, source)
    return Config(**sections)


def _build_section(name: str, cls: type, values: dict, problems: list[str]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            close = _closest(str(key), fields)
            hint = f" (did you mean '{name}.{close}'?)" if close else ""
            problems.append(f"unknown key '{name}.{key}'{hint}")
            continue
        problem, value = _check_value(f"{name}.{key}", value, hints[key], fields[key].metadata)
        if problem:
            problems.append(problem)
        else:
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError:
        return cls()


def _check_value(key: str, value: Any, hint: Any, meta: dict) -> tuple[str | None, Any]:
    allowed = typing.get_args(hint) if _is_union(hint) else (hint,)
    optional = type(None) in allowed
    base = next(t for t in allowed if t is not type(None))
    if value is None:
        return (None if optional else f"'{key}' must not be null ({_type_name(base)})"), value
    if base is float and type(value) is int:
        try:
            value = float(value)
        except OverflowError:  # an integer past the largest float: refused below as not finite
            value = math.inf
    if base is float and type(value) is str:
        value = _yaml11_float(value)  # PyYAML reads 1e-3 (no dot) as a string
    if base is str and type(value) in (int, float) and not isinstance(value, bool):
        value = str(value)  # e.g. a separator or path written as a bare number
    if type(value) is not base:
        shown = f"{value!r}" if len(repr(value)) < 40 else type(value).__name__
        return f"'{key}' must be {_type_name(base)}, not {shown}", value
    if base is float and not math.isfinite(value):
        return f"'{key}' must be a finite number, not {value}", value
    choices = meta.get("choices")
    if choices and value not in choices:
        options = " | ".join(str(c) for c in choices if c is not None)
        return f"'{key}' must be one of {options}, not {value!r}", value
    low, high = meta.get("min"), meta.get("max")
    if low is not None and (value < low or (meta.get("min_exclusive") and value == low)):
        relation = "greater than" if meta.get("min_exclusive") else "at least"
        return f"'{key}' must be {relation} {low:g}, not {value:g}", value
    if high is not None and (value > high or (meta.get("max_exclusive") and value == high)):
        relation = "less than" if meta.get("max_exclusive") else "at most"
        return f"'{key}' must be {relation} {high:g}, not {value:g}", value
    return None, value


def _yaml11_float(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _cross_checks(s: dict) -> list[str]:
    problems = []
    train = s["train"]
    if train.max_steps is None and train.max_time is None:
        problems.append("'train.max_steps' and 'train.max_time' are both null; set at least one "
                        "so training ends")
    return problems


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _type_name(t: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        t, t.__name__)


def _closest(key: str, options: typing.Iterable[str]) -> str | None:
    import difflib

    match = difflib.get_close_matches(key, list(options), n=1, cutoff=0.6)
    return match[0] if match else None


def field_reference() -> list[tuple[str, str, Any, str]]:
    """(key, type, default, help) for every config key: the README's reference table."""
    rows = []
    for name, cls in _SECTION_CLASSES.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            allowed = typing.get_args(hint) if _is_union(hint) else (hint,)
            kind = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            rows.append((f"{name}.{f.name}", kind, f.default, f.metadata["help"]))
    return rows
