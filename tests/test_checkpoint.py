import pickle

import pytest
import torch

from charrnn import checkpoint
from charrnn.errors import CheckpointError


def test_run_directory_means_best_pt(tiny_run):
    assert checkpoint.resolve(tiny_run) == tiny_run / "best.pt"


def test_checkpoint_holds_everything_sample_needs(tiny_run):
    payload = checkpoint.load(tiny_run / "best.pt")
    for key in ("model", "vocab", "model_args", "step", "val_loss", "config"):
        assert key in payload
    assert "train_state" not in payload  # weights and training state are kept apart
    assert "train_state" in checkpoint.load(tiny_run / "last.pt")
    model, vocab, _ = checkpoint.load_model(tiny_run)
    assert model.args.vocab_size == vocab.size


class Evil:
    def __reduce__(self):
        return (print, ("owned",))


def test_a_pickle_that_runs_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": "charrnn-checkpoint", "x": Evil()}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        checkpoint.load(path)
    assert "owned" not in capsys.readouterr().out


def test_truncated_and_foreign_files_are_clear_errors(tmp_path, tiny_run):
    data = (tiny_run / "best.pt").read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="damaged"):
        checkpoint.load(cut)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError):
        checkpoint.load(text)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(CheckpointError, match="not a charrnn checkpoint"):
        checkpoint.load(other)
    plain_pickle = tmp_path / "plain.pt"
    plain_pickle.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError):
        checkpoint.load(plain_pickle)


def test_weights_that_do_not_fit_the_settings_are_refused(tmp_path, tiny_run):
    payload = checkpoint.load(tiny_run / "best.pt")
    payload["model_args"] = {**payload["model_args"], "hidden_size": 64}
    path = tmp_path / "bad.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="do not match"):
        checkpoint.load_model(path)


def test_missing_checkpoint_and_empty_run_dir(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint.load(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        checkpoint.load(tmp_path)


def test_other_versions_missing_keys_and_inconsistent_vocabularies_are_refused(tmp_path,
                                                                              tiny_run):
    payload = checkpoint.load(tiny_run / "best.pt")
    cases = {
        "newer.pt": ({**payload, "version": 2}, "format version 2; this charrnn reads version 1"),
        "no_model.pt": ({k: v for k, v in payload.items() if k != "model"}, "lacks model"),
        "short_vocab.pt": ({**payload, "vocab": {**payload["vocab"],
                                                 "chars": payload["vocab"]["chars"][:-1],
                                                 "counts": payload["vocab"]["counts"][:-1]}},
                           "outputs but its vocabulary has"),
        "bad_vocab.pt": ({**payload, "vocab": {**payload["vocab"], "chars": "abc"}},
                         "not a valid charrnn vocabulary"),
    }
    for name, (bad, message) in cases.items():
        torch.save(bad, tmp_path / name)
        with pytest.raises(CheckpointError, match=message):
            checkpoint.load_model(tmp_path / name)


def test_a_checkpoint_that_cannot_be_read_is_not_called_damaged(tiny_run, monkeypatch):
    """A last.pt of mode 000 was "damaged, truncated or not a PyTorch file; use best.pt"."""
    import errno
    import os

    def unreadable(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - root reads anything
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(checkpoint.torch, "load", unreadable)
    with pytest.raises(CheckpointError, match="cannot read .*last.pt: Permission denied; "
                                               "check its permissions"):
        checkpoint.load(tiny_run / "last.pt")
