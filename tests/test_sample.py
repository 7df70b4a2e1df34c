import pytest
import torch

from charrnn.checkpoint import load_model
from charrnn.errors import UsageError
from charrnn.model import CharRNN, ModelArgs
from charrnn.sample import Sampler, SampleSettings, parse_temperatures
from charrnn.vocab import UNK_ID, Vocab


@pytest.fixture
def sampler(tiny_run):
    model, vocab, _ = load_model(tiny_run)
    return Sampler(model, vocab)


def test_same_seed_same_text_and_different_seed_differs(sampler):
    settings = SampleSettings(length=80, temperature=1.0, seed=5)
    a = sampler.sample_text(settings, "The ")
    b = sampler.sample_text(settings, "The ")
    c = sampler.sample_text(SampleSettings(length=80, temperature=1.0, seed=6), "The ")
    assert a == b and a != c
    assert len(a[0]) == 80


def test_all_characters_come_from_the_vocabulary(sampler):
    texts = sampler.sample_text(SampleSettings(length=300, temperature=1.5, num_samples=4,
                                               seed=1))
    assert len(texts) == 4
    allowed = set(sampler.vocab.chars)
    assert all(set(t) <= allowed for t in texts)  # never <unk>


def test_temperature_zero_is_argmax():
    torch.manual_seed(0)
    vocab = Vocab.build(["abcdefgh"])
    model = CharRNN(ModelArgs(vocab_size=vocab.size, hidden_size=8, embedding_dim=4,
                              num_layers=2)).eval()
    sampler = Sampler(model, vocab)
    text = sampler.sample_text(SampleSettings(length=10, temperature=0))[0]
    # Greedy decoding by hand: feed the same start character, always take the argmax.
    ids = [vocab.stoi[c] for c in sampler.vocab.decode(sampler.start_ids([]))]
    with torch.no_grad():
        logits, _, state = model(torch.tensor([ids]))
        logits, expected = logits[:, -1], []
        for _ in range(10):
            logits[:, UNK_ID] = -float("inf")
            nxt = logits.argmax(-1)
            expected.append(vocab.itos[nxt.item()])
            logits, state = model.step(nxt, state)
    assert text == "".join(expected)


@pytest.mark.parametrize("temperature", [1e-30, 1e-38, 1e-40, 1e-300, 5e-324])
def test_a_vanishing_temperature_is_greedy_not_a_crash(sampler, temperature):
    greedy = sampler.sample_text(SampleSettings(length=50, temperature=0), "How")
    tiny = sampler.sample_text(SampleSettings(length=50, temperature=temperature, seed=1), "How")
    assert tiny == greedy


def test_top_k_one_equals_greedy(sampler):
    greedy = sampler.sample_text(SampleSettings(length=50, temperature=0), "How")
    top1 = sampler.sample_text(SampleSettings(length=50, temperature=1.0, top_k=1, seed=3),
                               "How")
    assert greedy == top1


def test_samples_in_a_batch_are_independent(sampler):
    texts = sampler.sample_text(SampleSettings(length=100, temperature=1.2, num_samples=3,
                                               seed=0))
    assert len(set(texts)) == 3


def test_prime_with_unknown_characters_lists_them(sampler):
    with pytest.raises(UsageError, match="2 characters the model cannot write .*: '红' '€'"):
        sampler.encode_prime("The 红€")


@pytest.mark.parametrize("settings", [
    SampleSettings(temperature=-0.1), SampleSettings(temperature=float("nan")),
    SampleSettings(temperature=float("inf")), SampleSettings(length=-1),
    SampleSettings(top_k=0), SampleSettings(top_k=1000), SampleSettings(num_samples=0),
    SampleSettings(top_p=0.0),
])
def test_bad_settings_are_usage_errors(sampler, settings):
    with pytest.raises(UsageError):
        settings.validate(sampler.vocab)


def test_temperature_list_parsing():
    assert parse_temperatures("0.2, 0.5,1") == [0.2, 0.5, 1.0]
    with pytest.raises(UsageError, match="not 'hot'"):
        parse_temperatures("hot")
    with pytest.raises(UsageError, match="finite number"):
        parse_temperatures("nan")
