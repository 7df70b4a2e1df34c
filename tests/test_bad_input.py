"""Every bad input a new user might try, from the command line: one clear line, no damage.

Each case must exit 1 (runtime) or 2 (usage) with one line on stderr that starts with
`error:` and names the problem and the fix, no traceback, and every file that was on disk
before left unchanged. Covered elsewhere and not repeated here: a missing path, a corpus
shorter than one window, YAML syntax errors, several config errors at once, a malformed
--set, device: cuda without CUDA, unknown prime characters, --top-k 0 or too large, negative
--length, negative or NaN temperature (test_cli.py); a full disk during training
(test_crash_safety.py).
"""

import codecs
import hashlib
import os
import random
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from charrnn import checkpoint
from charrnn.cli import app
from charrnn.vocab import Vocab
from conftest import POEM, assert_clean_error, set_args

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def snapshot(*roots: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest()
            for root in roots for p in root.rglob("*") if p.is_file()}


def train_on(data: Path, tmp: Path, **extra) -> list:
    return ["train", *set_args(data, tmp / "run", **extra)]


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def poem(tmp: Path) -> Path:
    return write(tmp / "poem.txt", POEM * 120)


def empty_directory_but_an_image(tmp: Path) -> Path:
    (tmp / "docs").mkdir()
    write(tmp / "docs" / "logo.png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    return tmp / "docs"


def other_vocabulary(tmp: Path) -> Path:
    path = tmp / "other.json"
    Vocab.build(["completely different text 1234"]).save(path)
    return path


def foreign_checkpoint(tmp: Path) -> Path:
    path = tmp / "model.pt"
    torch.save({"state_dict": {"weight": torch.zeros(2, 2)}, "epoch": 3}, path)
    return path


def tampered_checkpoint(tmp: Path, run: Path) -> Path:
    payload = checkpoint.load(run / "best.pt")
    payload["step"] = "x"
    path = tmp / "tampered.pt"
    torch.save(payload, path)
    return path


def copy_of_run(tmp: Path, run: Path) -> Path:
    copy = tmp / "copy"
    copy.mkdir()
    for path in run.iterdir():
        if path.is_file():
            (copy / path.name).write_bytes(path.read_bytes())
    return copy


def damaged_run(tmp: Path, run: Path, name: str, content: bytes) -> Path:
    copy = copy_of_run(tmp, run)
    (copy / name).write_bytes(content)
    return copy


def altered_checkpoint(tmp: Path, run: Path, change) -> Path:
    """A copy of the run's best.pt, `change`d, as someone handing over a file might do."""
    payload = checkpoint.load(run / "best.pt")
    payload = {**payload, "model": dict(payload["model"]),
               "model_args": dict(payload["model_args"])}
    change(payload)
    path = tmp / "altered.pt"
    torch.save(payload, path)
    return path


def nan_weight(payload: dict) -> None:
    payload["model"]["head.bias"] = payload["model"]["head.bias"].clone()
    payload["model"]["head.bias"][3] = float("nan")


def alias_bomb(levels: int = 40) -> list:
    """A structure of 2**levels leaves made of `levels` shared lists: a few hundred bytes."""
    bomb: list = ["x"]
    for _ in range(levels):
        bomb = [bomb, bomb]
    return bomb


YAML_ALIAS_BOMB = "\n".join(["a0: &a0 [x, x, x, x, x, x, x, x, x]"] + [
    f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
    f"*a{i - 1}, *a{i - 1}]" for i in range(1, 9)] + ["data: {separator: *a8}"]) + "\n"


def with_run(command: str, *options):
    """`charrnn COMMAND -k RUN OPTIONS...` for the tiny run."""
    return lambda t, run: [command, "-k", run, *options]


def fifo(tmp: Path, name: str = "fifo") -> Path:
    path = tmp / name
    os.mkfifo(path)
    return path


def deep_json(tmp: Path) -> Path:
    return write(tmp / "deep.json", "[" * 100_000 + "]" * 100_000)


BAD_INPUTS = {
    # ---- the corpus
    "empty file": (lambda t, run: train_on(write(t / "e.txt", ""), t), 1,
                   ["corpus is empty"]),
    "whitespace only": (lambda t, run: train_on(write(t / "w.txt", " \n\t  \n" * 200), t), 1,
                        ["only whitespace", "nothing to learn"]),
    "binary file": (lambda t, run: train_on(write(t / "x.png", b"\x89PNG\r\n\x1a\n\0\0IHDR"), t),
                    1, ["x.png looks like a binary file", "byte offset 8", "UTF-8 text"]),
    "invalid UTF-8": (lambda t, run: train_on(write(t / "l1.txt", POEM.encode() * 3
                                                    + "café au lait".encode("latin-1")), t), 1,
                      ["l1.txt is not valid UTF-8", f"byte offset {len(POEM.encode()) * 3 + 3}",
                       "iconv -f LATIN1 -t UTF-8"]),
    "UTF-16 with a BOM": (lambda t, run: train_on(write(t / "u.txt", codecs.BOM_UTF16_LE
                                                        + POEM.encode("utf-16-le")), t), 1,
                          ["u.txt is UTF-16 text, not UTF-8", "iconv -f UTF-16"]),
    "directory without text": (lambda t, run: train_on(empty_directory_but_an_image(t), t), 1,
                               ["holds no text files (1 binary file skipped)"]),
    "glob matching nothing": (lambda t, run: train_on(t / "*.nothing", t), 1,
                              ["matches no files", "quote it"]),
    "validation split too short": (lambda t, run: train_on(poem(t), t, **{
        "data.val_fraction": 0.001}), 1, ["validation split has 21 characters",
                                          "raise data.val_fraction"]),
    "one character": (lambda t, run: train_on(write(t / "a.txt", "a" * 5000), t), 1,
                      ["only 1 distinct character", "at least two"]),
    "empty path": (lambda t, run: train_on("", t), 2, ["an empty path was given"]),
    # ---- the config
    "YAML not a mapping": (lambda t, run: ["train", "--config", write(t / "c.yaml", "- a\n")], 2,
                           ["must be a YAML mapping", "(it holds a list)"]),
    "unknown key": (lambda t, run: train_on(poem(t), t, **{"model.hiden": 3}), 2,
                    ["unknown key 'model.hiden'", "did you mean 'model.hidden_size'"]),
    "wrong type": (lambda t, run: train_on(poem(t), t, **{"model.num_layers": "two"}), 2,
                   ["'model.num_layers' must be an integer, not 'two'"]),
    "negative lr": (lambda t, run: train_on(poem(t), t, **{"optim.lr": -0.1}), 2,
                    ["'optim.lr' must be greater than 0"]),
    "zero lr": (lambda t, run: train_on(poem(t), t, **{"optim.lr": 0}), 2,
                ["'optim.lr' must be greater than 0"]),
    "hidden_size 0": (lambda t, run: train_on(poem(t), t, **{"model.hidden_size": 0}), 2,
                      ["'model.hidden_size' must be at least 1"]),
    "dropout 1.5": (lambda t, run: train_on(poem(t), t, **{"model.dropout": 1.5}), 2,
                    ["'model.dropout' must be less than 1"]),
    "num_layers 0": (lambda t, run: train_on(poem(t), t, **{"model.num_layers": 0}), 2,
                     ["'model.num_layers' must be at least 1"]),
    "unknown cell": (lambda t, run: train_on(poem(t), t, **{"model.cell": "transformer"}), 2,
                     ["'model.cell' must be one of rnn | lstm | gru"]),
    "out_dir inside a file": (lambda t, run: ["train", *set_args(poem(t), t / "poem.txt" / "run")],
                              1, ["cannot create directory", "choose a writable location"]),
    # ---- checkpoints that do not fit what they are used with
    "truncated checkpoint": (lambda t, run: ["sample", "-k", write(
        t / "cut.pt", (run / "best.pt").read_bytes()[:5000])], 1,
        ["cut.pt is damaged, truncated or not a PyTorch file", "use another checkpoint"]),
    "random bytes as a checkpoint": (lambda t, run: ["info", write(
        t / "noise.pt", random.Random(0).randbytes(5000))], 1,
        ["noise.pt is damaged, truncated or not a PyTorch file"]),
    "a checkpoint field of the wrong type": (lambda t, run: ["info", tampered_checkpoint(t, run)],
                                             1, ["has step of the wrong type", "damaged"]),
    "another program's file": (lambda t, run: ["eval", "-k", foreign_checkpoint(t)], 1,
                               ["model.pt is not a charrnn checkpoint", "charrnn train"]),
    "init_from with another data.vocab": (lambda t, run: train_on(poem(t), t, **{
        "train.init_from": run, "data.vocab": other_vocabulary(t)}), 1,
        ["is not the vocabulary of the checkpoint", "--set data.vocab=null"]),
    "resume with another data.vocab": (lambda t, run: [
        "train", "--resume", copy_of_run(t, run), "--set", f"data.vocab={other_vocabulary(t)}"],
        1, ["is not the vocabulary of the checkpoint"]),
    "eval on text in another script": (lambda t, run: [
        "eval", "-k", run, write(t / "zh.txt", "第一回　甄士隐梦幻识通灵\n" * 50)], 1,
        ["are not in the model's vocabulary", "does not match the model"]),
    "vocab output is a directory": (lambda t, run: ["vocab", "build", poem(t), "-o", t], 1,
                                    ["Is a directory", "name a file inside it instead"]),
    # ---- sampling
    "infinite temperature": (lambda t, run: ["sample", "-k", run, "--temperature", "inf"], 2,
                             ["temperature must be a finite number"]),
    # ---- what is not a regular file, as any input: reported for what it is, never opened
    "a FIFO as corpus": (lambda t, run: train_on(fifo(t), t), 1,
                         ["fifo: it is a FIFO (named pipe), not a regular file"]),
    "/dev/null as corpus": (lambda t, run: ["vocab", "build", "/dev/null", "-o", t / "v.json"], 1,
                            ["/dev/null: it is a character device, not a regular file"]),
    "a FIFO as config": (lambda t, run: ["train", "--config", fifo(t)], 2,
                         ["it is a FIFO (named pipe), not a regular file"]),
    "a FIFO as vocabulary": (lambda t, run: ["vocab", "show", fifo(t)], 1,
                             ["it is a FIFO (named pipe), not a regular file"]),
    "a FIFO as checkpoint": (lambda t, run: ["sample", "-k", fifo(t, "x.pt")], 1,
                             ["x.pt: it is a FIFO (named pipe), not a regular file"]),
    "a FIFO in a mirror directory": (lambda t, run: [
        "data", "get", "nietzsche", "--mirror", fifo(t, "nietzsche.txt").parent, "--dest",
        t / "dl"], 1, ["nietzsche.txt: it is a FIFO (named pipe), not a regular file"]),
    "a FIFO as --dest": (lambda t, run: ["data", "get", "nietzsche", "--dest", fifo(t)], 1,
                         ["is a FIFO (named pipe), not a directory"]),
    "a FIFO as data.vocab": (lambda t, run: train_on(poem(t), t, **{"data.vocab": fifo(t)}), 1,
                             ["not a regular file"]),
    # ---- configs with bounded work: size, nesting, aliases, values YAML cannot build
    "YAML alias bomb": (lambda t, run: ["train", "--config", write(t / "c.yaml",
                                                                  YAML_ALIAS_BOMB)], 2,
                        ["holds more than 10,000 values", "YAML aliases"]),
    "--set alias bomb": (lambda t, run: ["train", "--set", "data.separator=" + YAML_ALIAS_BOMB
                                         .replace("\n", ", ").join("{}")], 2,
                         ["holds more than 10,000 values"]),
    "YAML nested 100,000 deep": (lambda t, run: ["train", "--config", write(
        t / "c.yaml", "a: " + "[" * 100_000 + "]" * 100_000)], 2, ["nests too deeply"]),
    "YAML 30th of February": (lambda t, run: ["train", "--config", write(
        t / "c.yaml", "train: {max_time: 2001-02-30}")], 2, ["a value cannot be read"]),
    "YAML 5,000-digit integer": (lambda t, run: ["train", "--config", write(
        t / "c.yaml", "model: {hidden_size: " + "9" * 5000 + "}")], 2,
        ["a value cannot be read"]),
    "config not UTF-8": (lambda t, run: ["train", "--config", write(t / "c.yaml",
                                                                   b"train: {out_dir: \xff}")],
                         2, ["not UTF-8 text (byte offset 17)"]),
    "config of 2 MB": (lambda t, run: ["train", "--config", write(t / "c.yaml", "#" * 2**21)], 2,
                       ["far more than a config"]),
    # ---- numbers bounded where they are read, naming the key or option
    "empty out_dir": (lambda t, run: train_on(poem(t), t, **{"train.out_dir": ""}), 2,
                      ["'train.out_dir' must not be empty"]),
    "train.threads 5000": (lambda t, run: train_on(poem(t), t, **{"train.threads": 5000}), 2,
                           ["'train.threads' must be at most"]),
    "train.seed 2**64": (lambda t, run: train_on(poem(t), t, **{"train.seed": 2**64}), 2,
                         ["'train.seed' must be at most 9223372036854775807"]),
    "train.seed -1": (lambda t, run: train_on(poem(t), t, **{"train.seed": -1}), 2,
                      ["'train.seed' must be at least 0"]),
    "num_layers 1000": (lambda t, run: train_on(poem(t), t, **{"model.num_layers": 1000}), 2,
                        ["'model.num_layers' must be at most 100"]),
    "hidden_size 10**400": (lambda t, run: train_on(poem(t), t, **{
        "model.hidden_size": 10**400}), 2,
        ["'model.hidden_size' must be at most 1000000, not a number of about 400 digits"]),
    "sample_length 10**9": (lambda t, run: train_on(poem(t), t, **{
        "train.sample_length": 10**9}), 2, ["'train.sample_length' must be at most 100000"]),
    "sample --seed 2**64": (with_run("sample", "--seed", 2**64), 2, ["--seed"]),
    "sample --num-samples 10**6": (with_run("sample", "-N", 10**6), 2, ["--num-samples"]),
    "sample --length 10**10": (with_run("sample", "-n", 10**10), 2, ["--length"]),
    "sample --top-k 10**30": (with_run("sample", "--top-k", 10**30), 2, ["--top-k"]),
    "eval --streams 10**9": (with_run("eval", "--streams", 10**9), 2, ["--streams"]),
    "eval --window 10**30": (with_run("eval", "--window", 10**30), 2, ["--window"]),
    "plot --width 100000": (lambda t, run: ["plot", run, "--width", 100_000, "-o",
                                            t / "p.png"], 2, ["--width"]),
    "vocab show --top 10**30": (lambda t, run: ["vocab", "show", run / "vocab.json", "--top",
                                                10**30], 2, ["--top"]),
    # ---- vocabularies
    "vocabulary nested 100,000 deep": (lambda t, run: ["vocab", "show", deep_json(t)], 1,
                                       ["deep.json: it nests too deeply to be read"]),
    "data.vocab nested 100,000 deep": (lambda t, run: train_on(poem(t), t, **{
        "data.vocab": deep_json(t)}), 1, ["it nests too deeply to be read"]),
    "vocabulary counts past 64 bits": (lambda t, run: ["vocab", "show", write(
        t / "v.json", (run / "vocab.json").read_text().replace('"counts": [', '"counts": [' +
                                                                "9" * 400 + ", 0, "))], 1,
        ["not a valid charrnn vocabulary"]),
    # ---- checkpoints from anyone: validated before anything is built or expanded
    "a checkpoint claiming 60,000 hidden units": (lambda t, run: ["eval", "-k", altered_checkpoint(
        t, run, lambda p: p["model_args"].update(hidden_size=60_000))], 1,
        ["weights do not match the model settings", "expected (240000, 16)"]),
    "init_from claiming 60,000 hidden units": (lambda t, run: train_on(poem(t), t, **{
        "train.init_from": altered_checkpoint(t, run, lambda p: p["model_args"].update(
            hidden_size=60_000))}), 1, ["expected (240000, 16)"]),
    "NaN weights": (lambda t, run: ["sample", "-k", altered_checkpoint(t, run, nan_weight)], 1,
                    ["the weight head.bias holds NaN or infinite values"]),
    "NaN weights for init_from": (lambda t, run: train_on(poem(t), t, **{
        "train.init_from": altered_checkpoint(t, run, nan_weight)}), 1,
        ["the weight head.bias holds NaN"]),
    "string weights": (lambda t, run: ["eval", "-k", altered_checkpoint(
        t, run, lambda p: p["model"].update({"head.bias": "weights"}))], 1,
        ["the weight head.bias is str, not a tensor"]),
    "integer weights": (lambda t, run: ["info", altered_checkpoint(
        t, run, lambda p: p["model"].update({"head.bias": torch.zeros(48, dtype=torch.long)}))],
        1, ["the weight head.bias is a torch.int64 tensor"]),
    "a weight missing": (lambda t, run: ["info", altered_checkpoint(
        t, run, lambda p: p["model"].pop("head.bias"))], 1, ["missing head.bias"]),
    "model_args missing a key": (lambda t, run: ["sample", "-k", altered_checkpoint(
        t, run, lambda p: p["model_args"].pop("cell"))], 1, ["lacks model_args cell"]),
    "model_args of the wrong type": (lambda t, run: ["sample", "-k", altered_checkpoint(
        t, run, lambda p: p["model_args"].update(num_layers="2"))], 1,
        ["invalid model settings", "'model.num_layers' must be an integer"]),
    "a markup model_args cell": (lambda t, run: ["info", altered_checkpoint(
        t, run, lambda p: p["model_args"].update(cell="[/]"))], 1,
        ["'model.cell' must be one of"]),
    "a step past 64 bits": (lambda t, run: ["info", altered_checkpoint(
        t, run, lambda p: p.update(step=2**70))], 1, ["has step of the wrong type"]),
    "a checkpoint alias bomb": (lambda t, run: ["eval", "-k", altered_checkpoint(
        t, run, lambda p: p.update(config={"data": alias_bomb()}))], 1,
        ["holds more than", "it is not a charrnn checkpoint"]),
    "eval without FILE beside no encoded text": (lambda t, run: [
        "eval", "-k", write(t / "moved.pt", (run / "best.pt").read_bytes())], 1,
        ["holds no encoded text for this checkpoint's vocabulary", "name the text to score"]),
    # ---- resuming with a damaged config.yaml: one line, the run untouched
    "resume: config.yaml with a syntax error": (lambda t, run: [
        "train", "--resume", damaged_run(t, run, "config.yaml", b"train: [\n")], 2,
        ["config.yaml is not valid YAML at line 2"]),
    "resume: config.yaml holding a list": (lambda t, run: [
        "train", "--resume", damaged_run(t, run, "config.yaml", b"- 1\n- 2\n")], 2,
        ["must be a YAML mapping", "(it holds a list)"]),
    "resume: config.yaml not UTF-8": (lambda t, run: [
        "train", "--resume", damaged_run(t, run, "config.yaml", b"\xff\xfe\x00")], 2,
        ["config.yaml: it is not UTF-8 text"]),
    "resume: config.yaml with --set": (lambda t, run: [
        "train", "--resume", damaged_run(t, run, "config.yaml", b"[1, 2]"), "--set",
        "train.max_steps=40"], 2, ["must be a YAML mapping"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_a_bad_input_is_one_clear_line_and_damages_nothing(case, tmp_path, tiny_run):
    make_args, code, fragments = BAD_INPUTS[case]
    args = make_args(tmp_path, tiny_run)
    before = snapshot(tmp_path, tiny_run)
    result = invoke(*args)
    assert_clean_error(result, code, *fragments)
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1
    after = snapshot(tmp_path, tiny_run)
    assert {p: after.get(p) for p in before} == before


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path, tiny_run):
    marker = tmp_path / "owned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))  # creates the marker file when unpickled

    evil = tmp_path / "evil.pt"
    torch.save({"format": "charrnn-checkpoint", "version": 1, "model": Payload()}, evil)
    for args in (["sample", "-k", evil], ["eval", "-k", evil, poem(tmp_path)],
                 train_on(poem(tmp_path), tmp_path, **{"train.init_from": evil})):
        assert_clean_error(invoke(*args), 1, "refusing to load", "would run code")
        assert not marker.exists()


def test_a_yaml_config_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "owned"
    config = write(tmp_path / "c.yaml", f"model: !!python/object/apply:builtins.open "
                                        f"['{marker}', 'w']\n")
    assert_clean_error(invoke("train", "--config", config), 2, "not valid YAML")
    assert not marker.exists()


def test_an_unreadable_file_is_a_clear_error(tmp_path, monkeypatch):
    path = poem(tmp_path)
    if os.geteuid() == 0:  # root reads anything: make the permission check fail instead
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != path
                            and real_access(p, mode, **kw))
    else:
        path.chmod(0)
    assert_clean_error(invoke(*train_on(path, tmp_path)), 1,
                       "cannot read", "permission denied", f"chmod u+r {path}")


def test_a_directory_that_cannot_be_read_or_entered_is_a_clear_error(tmp_path, monkeypatch):
    closed = tmp_path / "closed"
    closed.mkdir()
    poem(closed)
    # Simulated, so that the test also holds for root (who may enter any directory).
    real_access, real_is_file = os.access, Path.is_file
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != closed
                        and real_access(p, mode, **kw))
    assert_clean_error(invoke(*train_on(closed, tmp_path)), 1,
                       f"cannot read the directory {closed}: permission denied", "chmod u+rx")

    def is_file(path: Path) -> bool:
        if closed in path.parents:
            raise PermissionError(13, "Permission denied", str(path))
        return real_is_file(path)

    monkeypatch.setattr(Path, "is_file", is_file)
    for spec in (closed / "poem.txt", closed / "*.txt"):
        assert_clean_error(invoke("vocab", "build", spec, "-o", tmp_path / "v.json"), 1,
                           f"cannot read {spec}: permission denied on a directory in its path")


def test_an_out_dir_without_write_permission_is_a_clear_error(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root may write to any directory")
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o500)
    try:
        assert_clean_error(invoke("train", *set_args(poem(tmp_path), run)), 1,
                           "Permission denied", "choose a writable train.out_dir")
    finally:
        run.chmod(0o700)


def test_more_than_65535_distinct_characters_train(tmp_path):
    # Supplementary ideographs: 70,000 distinct characters, more than uint16 ids can hold.
    chars = "".join(chr(0x20000 + i) for i in range(70_000))
    corpus = write(tmp_path / "many.txt", (chars + "\n") * 2)
    run = tmp_path / "run"
    result = invoke("train", *set_args(corpus, run, **{
        "data.seq_len": 8, "data.batch_size": 2, "model.hidden_size": 8,
        "model.embedding_dim": 4, "model.num_layers": 1, "train.max_steps": 1,
        "train.eval_every": 0, "train.eval_chars": 1000, "data.val_fraction": 0.01}))
    assert result.exit_code == 0, result.output
    model, vocab, _ = checkpoint.load_model(run)
    assert vocab.size == 70_002 and vocab.dtype.name == "uint32"
    assert (run / "ids.bin").stat().st_size == 4 * 2 * 70_001  # four bytes per id


# ---- values that overflow float32 --------------------------------------------------------------
@pytest.mark.parametrize("option", [["--temperature", "1e39"], ["--temperature", "1e-320"],
                                    ["--top-p", "1e-300"], ["--top-p", "5e-324"]])
def test_finite_values_past_float32_sample_cleanly(option, tiny_run):
    result = invoke("sample", "-k", tiny_run, "-n", "20", "--seed", "1", *option)
    assert result.exit_code == 0, result.output
    assert len(result.stdout.rstrip("\n")) == 20


# ---- work bounded by the text, not by the number asked for ------------------------------------
@pytest.fixture
def forward_calls(monkeypatch):
    """The batch size of every forward call of any model."""
    from charrnn.model import CharRNN

    calls: list[int] = []
    forward = CharRNN.forward

    def counting(self, idx, *args, **kwargs):
        calls.append(idx.shape[0])
        return forward(self, idx, *args, **kwargs)

    monkeypatch.setattr(CharRNN, "forward", counting)
    return calls


def test_a_window_longer_than_the_text_costs_what_the_text_costs(tiny_run, forward_calls):
    whole = invoke("eval", "-k", tiny_run, "--window", 2_075)  # the validation split's length
    calls = len(forward_calls)
    forward_calls.clear()
    huge = invoke("eval", "-k", tiny_run, "--window", 10**9)
    assert huge.exit_code == 0 and huge.stdout == whole.stdout
    assert len(forward_calls) == calls <= 10  # one pass in chunks, not 10**9 / 256 calls


def test_more_streams_than_the_text_has_room_for_are_not_read(tiny_run, forward_calls):
    result = invoke("eval", "-k", tiny_run, "--streams", 65_536)
    assert result.exit_code == 0, result.output
    assert max(forward_calls) == 2  # 2,075 characters to score: room for two 1,024 burn-ins
    assert result.stdout == invoke("eval", "-k", tiny_run, "--streams", 1).stdout


def test_threads_and_seeds_at_their_bounds_work(tmp_path, tiny_run):
    from charrnn.config import max_threads

    result = invoke(*train_on(poem(tmp_path), tmp_path, **{
        "train.threads": max_threads(), "train.seed": 2**63 - 1, "train.max_steps": 2,
        "train.eval_every": 0}))
    assert result.exit_code == 0, result.output
    sampled = invoke("sample", "-k", tiny_run, "-n", "5", "--seed", 2**64 - 1)
    assert sampled.exit_code == 0, sampled.output


# ---- small ones --------------------------------------------------------------------------------
def test_a_tilde_is_expanded_in_every_path_key_and_option(tmp_path, tiny_run, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    poem(home)
    (home / "vocab.json").write_bytes((tiny_run / "vocab.json").read_bytes())
    (home / "init.pt").write_bytes((tiny_run / "best.pt").read_bytes())
    result = invoke("train", *set_args(tmp_path / "unused", tmp_path / "unused", **{
        "data.path": "~/poem.txt", "data.vocab": "~/vocab.json", "train.init_from": "~/init.pt",
        "train.out_dir": "~/runs/tuned", "train.max_steps": 2, "train.eval_every": 0}))
    assert result.exit_code == 0, result.output
    assert (home / "runs" / "tuned" / "best.pt").is_file()
    assert not (Path.cwd() / "~").exists()
    for args in (["sample", "-k", "~/runs/tuned", "-n", "5", "-o", "~/s.txt"],
                 ["eval", "-k", "~/runs/tuned"], ["info", "~/runs/tuned"],
                 ["vocab", "show", "~/vocab.json"], ["plot", "~/runs/tuned", "-o", "~/p.png"],
                 ["train", "--resume", "~/runs/tuned", "--set", "train.max_steps=3"]):
        assert invoke(*args).exit_code == 0, args
    assert (home / "s.txt").is_file() and (home / "p.png").is_file()


def test_a_fifo_as_corpus_is_refused_without_waiting_for_a_writer(tmp_path):
    import subprocess
    import sys

    path = fifo(tmp_path)
    # In a child with a timeout: opening the FIFO would block forever.
    child = subprocess.run([sys.executable, "-m", "charrnn", "vocab", "build", str(path), "-o",
                            str(tmp_path / "v.json")], capture_output=True, text=True,
                           timeout=120)
    assert child.returncode == 1
    assert child.stderr.startswith("error: cannot read") and "not a regular file" in child.stderr
