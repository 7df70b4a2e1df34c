"""The same journey on a GPU: skipped without CUDA (run them on a GPU machine)."""

import pytest
import torch
from typer.testing import CliRunner

from charrnn.cli import app
from charrnn.config import load_config
from charrnn.distributed import World
from charrnn.metrics import SilentView
from charrnn.rundir import RunDir
from charrnn.train import Trainer
from conftest import set_args, tiny_overrides

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
runner = CliRunner()


def test_train_sample_eval_on_cuda(tmp_path, corpus):
    run = tmp_path / "run"
    args = set_args(corpus, run, **{"train.device": "cuda", "train.precision": "auto"})
    trained = runner.invoke(app, ["train", *args])
    assert trained.exit_code == 0, trained.output
    assert "device: cuda" in trained.stdout
    sampled = runner.invoke(app, ["sample", "-k", str(run), "-n", "50", "--seed", "1",
                                  "--device", "cuda", "-N", "4"])
    assert sampled.exit_code == 0, sampled.output
    again = runner.invoke(app, ["sample", "-k", str(run), "-n", "50", "--seed", "1",
                                "--device", "cuda", "-N", "4"])
    assert again.stdout == sampled.stdout
    scored = runner.invoke(app, ["eval", "-k", str(run), "--device", "cuda"])
    assert scored.exit_code == 0 and "bits/char" in scored.stdout


def test_training_steps_never_wait_for_the_gpu(tmp_path, corpus):
    config = load_config(None, tiny_overrides(corpus, tmp_path / "run", **{
        "train.device": "cuda", "data.reset_every": 64}))
    world = World(device=torch.device("cuda"))
    trainer = Trainer(config, RunDir(tmp_path / "run"), world, SilentView())
    for _ in range(3):
        trainer.train_step()  # warm-up: allocations, cuDNN plans
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host-device synchronisation now raises
    try:
        for _ in range(20):
            trainer.train_step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
