import json
import sys

import pytest

from charrnn.errors import UsageError
from charrnn.metrics import JsonlLogger, TensorBoardLogger, read_metrics


def test_jsonl_logger_appends_one_object_per_line_and_reader_skips_a_torn_tail(tmp_path):
    logger = JsonlLogger(tmp_path)
    logger.log({"kind": "train", "step": 1, "loss": 2.5})
    logger.log({"kind": "eval", "step": 2, "val_loss": float("nan")})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "st')  # a process killed mid-write
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[1])["val_loss"] is None  # NaN is not JSON: stored as null
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]


def test_tensorboard_without_the_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(UsageError, match="pip install 'charrnn\\[tensorboard\\]'"):
        TensorBoardLogger(tmp_path)


def test_tensorboard_logger_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    logger = TensorBoardLogger(tmp_path)
    logger.log({"kind": "train", "step": 3, "loss": 1.5, "lr": 0.01})
    logger.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
