"""Run configuration: frozen dataclasses read from YAML, with `--set key=value` overrides.

Every problem (unknown key, wrong type, value out of range) is collected and reported
together, each naming its key, as one `ConfigError`. Every number is bounded here, where it
is read, by what the code downstream can do with it (a seed torch accepts, threads the
machine can run); path keys have `~` expanded. A config file is read with bounded work: its
size, its nesting and what its YAML aliases expand to are all limited (safeload.py).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from charrnn import fileio, safeload
from charrnn.errors import ConfigError, UsageError

MAX_CONFIG_BYTES = 1 << 20  # a config is a few kB; anything this big is not one
MAX_CONFIG_VALUES = 10_000  # values in a config, YAML aliases expanded (a real one has ~50)
MAX_SEED = 2**63 - 1  # torch seeds are 64-bit; training adds the process rank to the seed


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity where the system tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def max_threads() -> int:
    """CPU threads worth asking torch for: a few per core this process may use."""
    return 4 * usable_cores()


def _opt(default: Any, help: str, *, min: float | None = None,
         max: float | typing.Callable[[], float] | None = None, min_exclusive: bool = False,
         max_exclusive: bool = False, choices: tuple | None = None, path: bool = False,
         nonempty: bool = False) -> Any:
    """A config field with its documentation and the range the validator enforces.

    `max` may be a function, for a bound that depends on the machine; `path` marks a path,
    whose `~` is expanded; `nonempty` refuses an empty string.
    """
    meta = {"help": help, "min": min, "max": max, "min_exclusive": min_exclusive,
            "max_exclusive": max_exclusive, "choices": choices, "path": path,
            "nonempty": nonempty}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DataConfig:
    path: str = _opt("builtin:python-docs",
                     "training text: a file, a directory (recursive), a glob or builtin:NAME",
                     path=True)
    vocab: str | None = _opt(None, "vocab.json to use; built from the training text when null",
                             path=True)
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
class ModelShape:
    """The network's own settings; model.ModelArgs adds the vocabulary size to these."""

    cell: str = _opt("lstm", "recurrent cell", choices=("rnn", "lstm", "gru"))
    embedding_dim: int = _opt(64, "size of each character's learned vector", min=1,
                              max=1_000_000)
    hidden_size: int = _opt(512, "units per recurrent layer", min=1, max=1_000_000)
    num_layers: int = _opt(1, "stacked recurrent layers", min=1, max=100)
    dropout: float = _opt(0.1, "dropout on the embedding, between layers and before the output",
                          min=0.0, max=1.0, max_exclusive=True)


@dataclass(frozen=True)
class ModelConfig(ModelShape):
    size: str = _opt("fixed", "fixed: as the keys above say | auto: fit the model and its "
                     "training (width, depth, lr, precision, evaluations) to train.max_time "
                     "on this machine; keys you set are kept",
                     choices=("fixed", "auto"))

    def shape(self) -> dict:
        """The network's own settings, as model.ModelArgs takes them."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(ModelShape)}


@dataclass(frozen=True)
class OptimConfig:
    lr: float = _opt(4e-3, "peak AdamW learning rate", min=0.0, min_exclusive=True)
    weight_decay: float = _opt(0.1, "AdamW decoupled weight decay (matrices only)", min=0.0)
    beta1: float = _opt(0.9, "AdamW beta1", min=0.0, max=1.0, max_exclusive=True)
    beta2: float = _opt(0.99, "AdamW beta2", min=0.0, max=1.0, max_exclusive=True)
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
    out_dir: str = _opt("runs/default", "run directory: checkpoints, metrics, config, caches",
                        path=True, nonempty=True)
    seed: int = _opt(1337, "random seed for weights, data order and dropout", min=0,
                     max=MAX_SEED)
    device: str = _opt("auto", "auto picks cuda, then mps, then cpu",
                       choices=("auto", "cpu", "cuda", "mps"))
    precision: str = _opt("auto", "auto: measured at the start, bf16 autocast where it trains "
                          "clearly faster here (the choice goes into the run's config.yaml), "
                          "else fp32", choices=("auto", "fp32", "bf16"))
    threads: int | None = _opt(None, "CPU threads for torch (null: all cores; at most 4 per "
                               "core)", min=1, max=max_threads)
    init_from: str | None = _opt(None, "start from this checkpoint's weights (fine-tuning)",
                                 path=True)
    keep_last: int = _opt(0, "also keep the K most recent step checkpoints", min=0)
    save_every_time: float | None = _opt(None, "also write last.pt every N seconds of training, "
                                         "so a hard kill loses at most that much (null: only "
                                         "at evaluations)", min=0.0, min_exclusive=True)
    # Below torchrun's --shutdown-timeout (30 s), after which torchrun kills its workers
    # without a word: at 30 the process's own "still running" line never came.
    preempt_grace: float = _opt(25.0, "seconds a stop signal (SIGTERM, SIGUSR1, SIGHUP, Ctrl-C) "
                                "leaves to save last.pt; past them the process exits without it",
                                min=0.0, min_exclusive=True)
    # gloo's own bound is 30 minutes: a hung process (a frozen machine, a lost network, a
    # deadlock) held every other one that long. Only the collectives of training steps are
    # bounded by it; the start (rank 0 encoding a large corpus while the others wait) is not.
    peer_timeout: float = _opt(300.0, "under torchrun: seconds a process waits for the others "
                               "at a training step before it takes one for hung and stops the "
                               "job (torchrun restarts it from last.pt if --max-restarts "
                               "allows)", min=0.0, min_exclusive=True, max=7 * 86400.0)
    sample_every: int = _opt(0, "print a short sample every N evaluations (0: never)", min=0)
    sample_length: int = _opt(200, "characters per training-time sample", min=1, max=100_000)
    tensorboard: bool = _opt(False, "also log to TensorBoard (needs the tensorboard package)")


@dataclass(frozen=True)
class Config:
    """A whole training config: four sections of checked values (see `load_config` and
    `config_from_dict` for building one, `replace` for a changed copy)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # The keys the user set ("model.hidden_size", ...): what automatic choices must keep.
    given: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    def to_dict(self) -> dict:
        return {name: dataclasses.asdict(getattr(self, name)) for name in _SECTION_CLASSES}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def replace(self, **sections: dict) -> Config:
        """A copy with some fields changed, e.g. replace(train={"max_steps": 5}): they count as
        set by the user (model.size: auto keeps them, as it keeps a config file's). The names
        are checked here, the values by `checked` (which train() calls)."""
        problems = [_unknown_section(name) for name in sections if name not in _SECTION_CLASSES]
        for name, values in sections.items():
            if not isinstance(values, dict):
                problems.append(f"'{name}' must be a mapping of keys to values")
            elif name in _SECTION_CLASSES:
                fields = {f.name for f in dataclasses.fields(_SECTION_CLASSES[name])}
                problems += [_unknown_key(name, key, fields) for key in values
                             if key not in fields]
        if problems:
            raise ConfigError(problems, "Config.replace")
        updated = {name: dataclasses.replace(getattr(self, name), **{
            key: plain_value(value) for key, value in values.items()})
            for name, values in sections.items()}
        given = self.given | {f"{name}.{key}" for name, values in sections.items()
                              for key in values}
        return dataclasses.replace(self, **updated, given=frozenset(given))

    def checked(self) -> Config:
        """This config after the checks a config file gets (ConfigError naming each bad key):
        one built or changed in code (`replace`) has had none."""
        return dataclasses.replace(config_from_dict(self.to_dict()), given=self.given)


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
    """A config file's mapping, read with bounded work; any problem is one UsageError."""
    path = Path(path).expanduser()
    kind = fileio.file_kind(path)
    if kind == "missing":
        raise UsageError(f"config file not found: {path}; see configs/ for examples")
    if kind != "file":
        raise UsageError(f"cannot read config {path}: {fileio.what_it_is(kind)}, not a "
                         "regular file; name a YAML file")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise UsageError(f"{path} is over {MAX_CONFIG_BYTES // 1024:,} kB, far more than "
                             "a config; name the YAML config file")
        raw = safeload.load_yaml(data.decode("utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"cannot read config {path}: it is not UTF-8 text (byte offset "
                         f"{exc.start}); save it as UTF-8") from None
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc) or "invalid syntax"
        raise UsageError(f"{path} is not valid YAML{where}: {problem}; fix the syntax") from None
    _check_size(raw, str(path))
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UsageError(f"{path} must be a YAML mapping with sections data, model, optim, "
                         f"train (it holds a {type(raw).__name__})")
    return raw


def _check_size(raw: Any, source: str) -> None:
    try:
        safeload.check_size(raw, max_nodes=MAX_CONFIG_VALUES, max_chars=MAX_CONFIG_BYTES,
                            what=source)
    except ValueError as exc:
        raise UsageError(f"{exc}; a config is a few dozen keys") from None


def parse_override(text: str) -> tuple[str, str, Any]:
    """'model.hidden_size=512' -> ('model', 'hidden_size', 512); the value is parsed as YAML."""
    name, sep, value = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not section or not key or "." in key:
        raise UsageError(f"malformed --set {text!r}; write SECTION.KEY=VALUE, "
                         "e.g. --set model.hidden_size=512")
    try:
        parsed = safeload.load_yaml(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value  # a plain string such as 'a: b' that is not valid YAML on its own
    _check_size(parsed, f"--set {name.strip()}")
    return section, key, parsed


def config_from_dict(raw: dict, source: str = "config") -> Config:
    """A config from nested mappings ({"model": {"hidden_size": 128}, ...}), every problem
    reported at once as a ConfigError naming its key; the keys given count as set."""
    problems: list[str] = []
    sections = {}
    for name in raw:
        if name not in _SECTION_CLASSES:
            problems.append(_unknown_section(name))
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
    given = frozenset(f"{name}.{key}" for name in _SECTION_CLASSES
                      for key in (raw.get(name) or {}))
    return Config(**sections, given=given)


def _build_section(name: str, cls: type, values: dict, problems: list[str]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            problems.append(_unknown_key(name, key, fields))
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


def _unknown_section(name: Any) -> str:
    return f"unknown section '{name}' (sections: {', '.join(_SECTION_CLASSES)})"


def _unknown_key(section: str, key: Any, fields: typing.Iterable[str]) -> str:
    close = _closest(str(key), fields)
    hint = f" (did you mean '{section}.{close}'?)" if close else ""
    return f"unknown key '{section}.{key}'{hint}"


def _check_value(key: str, value: Any, hint: Any, meta: dict) -> tuple[str | None, Any]:
    allowed = typing.get_args(hint) if _is_union(hint) else (hint,)
    optional = type(None) in allowed
    base = next(t for t in allowed if t is not type(None))
    if value is None:
        return (None if optional else f"'{key}' must not be null ({_type_name(base)})"), value
    value = plain_value(value)
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
        shown = _short(value)
        shown = shown if len(shown) < 40 else type(value).__name__
        return f"'{key}' must be {_type_name(base)}, not {shown}", value
    if base is float and not math.isfinite(value):
        return f"'{key}' must be a finite number, not {value}", value
    choices = meta.get("choices")
    if choices and value not in choices:
        options = " | ".join(str(c) for c in choices if c is not None)
        return f"'{key}' must be one of {options}, not {_short(value)}", value
    if base is str and meta.get("path"):
        value = os.path.expanduser(value)
    if base is str and meta.get("nonempty") and not value.strip():
        return f"'{key}' must not be empty; name a directory", value
    low, high = meta.get("min"), meta.get("max")
    if callable(high):
        high = high()
    if low is not None and (value < low or (meta.get("min_exclusive") and value == low)):
        relation = "greater than" if meta.get("min_exclusive") else "at least"
        return f"'{key}' must be {relation} {_number(low)}, not {_number(value)}", value
    if high is not None and (value > high or (meta.get("max_exclusive") and value == high)):
        relation = "less than" if meta.get("max_exclusive") else "at most"
        return f"'{key}' must be {relation} {_number(high)}, not {_number(value)}", value
    return None, value


def plain_value(value: Any) -> Any:
    """A value a program passed (numpy's numbers and booleans, a pathlib path) as the plain
    Python value a config file gives: np.float64(1e-4) was refused as "must be a number"."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        return value.item()  # a numpy scalar: its bool, int or float
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


def _short(value: Any) -> str:
    """A value as the user wrote it, cut short: never expands a whole list or mapping."""
    shortener = reprlib.Repr()
    shortener.maxstring = shortener.maxother = 40
    shortener.maxlevel = 2
    try:
        return shortener.repr(value)
    except ValueError:  # an integer too long to print
        return type(value).__name__


def _number(value: float) -> str:
    """A bound or value as a person reads it: 1e-05, 9223372036854775807, a 400-digit number."""
    if isinstance(value, int):
        if value.bit_length() > 96:  # str() of a huge integer is slow, and refused past 4,300
            digits = value.bit_length() * math.log10(2)
            return f"{'-' if value < 0 else ''}a number of about {digits:,.0f} digits"
        return str(value)
    return f"{value:g}"


def _yaml11_float(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _cross_checks(s: dict) -> list[str]:
    problems = []
    train = s["train"]
    if any("\ud800" <= c <= "\udfff" for c in s["data"].separator):  # not UTF-8 text
        problems.append("'data.separator' holds a lone surrogate (U+D800-U+DFFF), which no "
                        "text can hold; use real characters")
    if train.max_steps is None and train.max_time is None:
        problems.append("'train.max_steps' and 'train.max_time' are both null; set at least one "
                        "so training ends")
    if s["model"].size == "auto" and train.max_time is None:
        problems.append("'model.size' is auto, which fits the model to a time budget: set "
                        "'train.max_time' (seconds)")
    if s["model"].size == "auto" and train.init_from:
        problems.append("'model.size' is auto but 'train.init_from' is set: fine-tuning keeps "
                        "the checkpoint's model; set model.size: fixed")
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
