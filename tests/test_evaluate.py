import math

import numpy as np
import pytest
import torch

from charrnn.evaluate import Score, score_stream, score_windows
from charrnn.model import CharRNN, ModelArgs


@pytest.fixture
def model():
    torch.manual_seed(0)
    return CharRNN(ModelArgs(vocab_size=7, hidden_size=16, embedding_dim=8, num_layers=2)).eval()


def single_pass_nats(model, ids):
    x = torch.from_numpy(ids[:-1].astype(np.int64))[None]
    y = torch.from_numpy(ids[1:].astype(np.int64))[None]
    with torch.no_grad():
        logits, _, _ = model(x)
        return torch.nn.functional.cross_entropy(logits[0], y[0], reduction="sum").item()


def test_single_stream_is_the_exact_log_likelihood(model):
    ids = np.random.default_rng(0).integers(0, 7, 3_001).astype(np.uint8)
    score = score_stream(model, ids, torch.device("cpu"), streams=1)
    assert score.chars == 3_000
    assert score.nats == pytest.approx(single_pass_nats(model, ids), rel=1e-5)


@pytest.mark.parametrize("streams", [2, 5, 16])
def test_parallel_segments_score_every_character_once_and_match_one_pass(model, streams):
    ids = np.random.default_rng(1).integers(0, 7, 20_001).astype(np.uint8)
    exact = score_stream(model, ids, torch.device("cpu"), streams=1)
    split = score_stream(model, ids, torch.device("cpu"), streams=streams, burn_in=256)
    assert split.chars == exact.chars == 20_000
    assert split.loss == pytest.approx(exact.loss, abs=1e-4)


def test_window_scoring_limits_context(model):
    ids = np.random.default_rng(2).integers(0, 7, 1_001).astype(np.uint8)
    score = score_windows(model, ids, 10, torch.device("cpu"))
    assert score.chars == 1_000
    expected = sum(single_pass_nats(model, ids[i:i + 11]) for i in range(0, 1_000, 10))
    assert score.nats == pytest.approx(expected, rel=1e-5)


def test_score_units():
    score = Score(nats=2 * math.log(2) * 100, chars=100)
    assert score.loss == pytest.approx(2 * math.log(2))
    assert score.bpc == pytest.approx(2.0)
    assert score.perplexity == pytest.approx(4.0)
    assert score.line() == "1.3863 nats/char  2.0000 bits/char  perplexity 4.00  (100 chars)"
