import pytest
import torch

from charrnn.model import CELLS, CharRNN, ModelArgs, map_state


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_output_shapes_and_loss_for_every_cell(cell):
    model = CharRNN(ModelArgs(vocab_size=11, cell=cell, embedding_dim=8, hidden_size=16,
                              num_layers=2, dropout=0.1))
    idx = torch.randint(0, 11, (3, 7))
    logits, loss, state = model(idx, idx)
    assert logits.shape == (3, 7, 11)
    assert loss.ndim == 0 and loss.item() > 0
    shapes = [s.shape for s in (state if isinstance(state, tuple) else (state,))]
    assert all(s == (2, 3, 16) for s in shapes)
    assert isinstance(state, tuple) == (cell == "lstm")


@pytest.mark.parametrize("fused", [False, True])  # the CPU's way, and the accelerators'
@pytest.mark.parametrize("batch", [1, 2, 64])
@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("hidden", [16, 8])  # 8 < 9 characters: the output layer apart
def test_one_step_at_a_time_equals_the_whole_sequence(cell, batch, fused, hidden):
    from charrnn.stepper import stepper_for

    torch.manual_seed(0)
    model = CharRNN(ModelArgs(vocab_size=9, cell=cell, embedding_dim=8, hidden_size=hidden,
                              num_layers=3)).eval()
    idx = torch.randint(0, 9, (batch, 12))
    with torch.no_grad():
        full, _, full_state = model(idx)
        stepper = stepper_for(model, fused=fused)
        carry, steps = None, []
        for t in range(12):
            logits, carry = stepper(idx[:, t], carry)
            steps.append(logits)
        expected = stepper.from_state(full_state)
    torch.testing.assert_close(torch.stack(steps, 1), full, rtol=1e-4, atol=1e-5)
    for a, b in zip(map_state(lambda s: s, carry), map_state(lambda s: s, expected),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_a_carry_continues_a_read_prime_and_its_rows_can_be_selected_and_joined(cell):
    from charrnn.model import join_streams
    from charrnn.stepper import stepper_for

    torch.manual_seed(1)
    model = CharRNN(ModelArgs(vocab_size=9, cell=cell, embedding_dim=8, hidden_size=16,
                              num_layers=2)).eval()
    idx = torch.randint(0, 9, (4, 10))
    with torch.no_grad():
        full, _, _ = model(idx)
        _, _, state = model(idx[:, :6])
        stepper = stepper_for(model)
        carry = stepper.from_state(state)
        # Rows 3 and 1 leave and come back in another order: each row keeps its own context.
        parts = [map_state(lambda s: s[:, [3]], carry), map_state(lambda s: s[:, [0, 1, 2]], carry)]
        carry, order = join_streams(parts), [3, 0, 1, 2]
        steps = []
        for t in range(6, 10):
            logits, carry = stepper(idx[order, t], carry)
            steps.append(logits)
    # Step t's logits score character t+1: the whole sequence's positions 6..9.
    torch.testing.assert_close(torch.stack(steps, 1), full[order, 6:10], rtol=1e-4, atol=1e-5)


def test_state_carries_context_between_calls():
    torch.manual_seed(0)
    model = CharRNN(ModelArgs(vocab_size=5, hidden_size=8, embedding_dim=4, num_layers=2)).eval()
    idx = torch.randint(0, 5, (1, 10))
    with torch.no_grad():
        whole, _, _ = model(idx)
        _, _, state = model(idx[:, :6])
        rest, _, _ = model(idx[:, 6:], state=state)
    torch.testing.assert_close(rest, whole[:, 6:], rtol=1e-4, atol=1e-5)


def test_lstm_forget_gate_bias_starts_at_one():
    model = CharRNN(ModelArgs(vocab_size=5, hidden_size=4, embedding_dim=4, num_layers=1))
    total = model.rnn.bias_ih_l0 + model.rnn.bias_hh_l0
    assert torch.all(total[4:8] == 1.0)


def test_unknown_cell_is_refused():
    with pytest.raises(ValueError, match="unknown cell"):
        CharRNN(ModelArgs(vocab_size=5, cell="transformer"))


def test_byte_dropout_drops_the_right_share_and_keeps_the_mean():
    from charrnn.model import byte_dropout

    torch.manual_seed(0)
    x = torch.ones(64, 64, 256)
    out = byte_dropout(x, 0.1)
    dropped = (out == 0).float().mean().item()
    assert abs(dropped - 26 / 256) < 0.005  # p rounded to 26/256
    assert abs(out.mean().item() - 1.0) < 0.01
    assert byte_dropout(x, 0.001) is x  # rounds to no dropout at all


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_a_vocabulary_too_large_for_a_table_steps_without_one(monkeypatch, cell):
    from charrnn import stepper as steppers

    torch.manual_seed(0)
    model = CharRNN(ModelArgs(vocab_size=9, cell=cell, embedding_dim=8, hidden_size=16)).eval()
    monkeypatch.setattr(steppers, "MAX_TABLE_BYTES", 0)
    for fused in (False, True):
        stepper = steppers.stepper_for(model, fused=fused)
        assert stepper.table is None
        idx = torch.randint(0, 9, (2, 5))
        with torch.no_grad():
            full, _, _ = model(idx)
            carry, steps = None, []
            for t in range(5):
                logits, carry = stepper(idx[:, t], carry)
                steps.append(logits)
        torch.testing.assert_close(torch.stack(steps, 1), full, rtol=1e-4, atol=1e-5)
