"""models.lstm.LSTM / GRU equal torch.nn.LSTM / nn.GRU: outputs, final states and the gradients of the input,
the initial state and every parameter, with weights copied over by load_state_dict.

Exactness is checked in float64 (the hand-written backward must agree to ~1e-12); one float32 case checks the
fast path's tolerance (atol 1e-5). Variable lengths are compared with pack_padded_sequence(enforce_sorted=False).
Modules are in training mode throughout unless said otherwise, so dropout=0 parity is train-mode parity.
"""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models.lstm import GRU, LSTM

INPUT, HIDDEN, BATCH, STEPS = 3, 5, 4, 7
LENGTHS = [5, 7, 1, 3]  # unsorted, one full length, one of a single step
CONFIGS = [  # (num_layers, bidirectional, batch_first)
    (1, False, True),
    (1, True, False),
    (2, False, False),
    (2, True, True),
]
KINDS = {"lstm": (LSTM, nn.LSTM), "gru": (GRU, nn.GRU)}


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: see conftest.py


def make_pair(kind, num_layers, bidirectional, batch_first, dropout=0.0, dtype=torch.float64,
              input_size=INPUT, hidden_size=HIDDEN):
    ours_class, torch_class = KINDS[kind]
    ours = ours_class(input_size, hidden_size, num_layers=num_layers, bidirectional=bidirectional,
                      dropout=dropout, batch_first=batch_first).to(dtype)
    reference = torch_class(input_size, hidden_size, num_layers=num_layers, bidirectional=bidirectional,
                            dropout=dropout, batch_first=batch_first).to(dtype)
    reference.load_state_dict(ours.state_dict())
    return ours, reference


def run_reference(reference, x, lengths, state):
    if lengths is None:
        return reference(x, state)
    packed = pack_padded_sequence(x, lengths, batch_first=reference.batch_first, enforce_sorted=False)
    packed_output, final = reference(packed, state)
    output, _ = pad_packed_sequence(packed_output, batch_first=reference.batch_first, total_length=x.shape[
        1 if reference.batch_first else 0])
    return output, final


def final_tensors(final):
    return list(final) if isinstance(final, tuple) else [final]


def check_parity(kind, ours, reference, x, lengths=None, with_state=False, atol=1e-10):
    """Same forward values, and same gradients of a loss that weighs every output and final state."""
    directions = 2 if ours.bidirectional else 1
    batch = x.shape[0 if ours.batch_first else 1]
    state = None
    if with_state:
        shape = (ours.num_layers * directions, batch, ours.hidden_size)
        state = tuple(torch.randn(shape, dtype=x.dtype, requires_grad=True) for _ in range(2 if kind == "lstm" else 1))
    call_state = state if state is None or kind == "lstm" else state[0]

    ours_output, ours_final = ours(x, lengths=None if lengths is None else torch.tensor(lengths), state=call_state)
    torch_output, torch_final = run_reference(reference, x, lengths, call_state)
    ours_values = [ours_output, *final_tensors(ours_final)]
    torch_values = [torch_output, *final_tensors(torch_final)]
    for ours_value, torch_value in zip(ours_values, torch_values, strict=True):
        assert ours_value.shape == torch_value.shape
        torch.testing.assert_close(ours_value, torch_value, atol=atol, rtol=0)

    loss_weights = [torch.randn_like(value) for value in torch_values]
    inputs = [x, *(state or ())]
    ours_grads = torch.autograd.grad(sum((v * w).sum() for v, w in zip(ours_values, loss_weights)),
                                     inputs + list(ours.parameters()))
    torch_grads = torch.autograd.grad(sum((v * w).sum() for v, w in zip(torch_values, loss_weights)),
                                      inputs + list(reference.parameters()))
    names = ["input"] + [f"state{i}" for i in range(len(inputs) - 1)] + [n for n, _ in ours.named_parameters()]
    for name, ours_grad, torch_grad in zip(names, ours_grads, torch_grads, strict=True):
        torch.testing.assert_close(ours_grad, torch_grad, atol=atol, rtol=0, msg=f"gradient of {name}")


def make_input(batch_first, dtype=torch.float64, batch=BATCH, steps=STEPS, size=INPUT):
    shape = (batch, steps, size) if batch_first else (steps, batch, size)
    return torch.randn(shape, dtype=dtype, requires_grad=True)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_layers,bidirectional,batch_first", CONFIGS)
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
def test_matches_torch(kind, num_layers, bidirectional, batch_first, lengths):
    torch.manual_seed(0)
    ours, reference = make_pair(kind, num_layers, bidirectional, batch_first)
    check_parity(kind, ours, reference, make_input(batch_first), lengths)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
def test_initial_state_matches_torch(kind, lengths):
    torch.manual_seed(1)
    ours, reference = make_pair(kind, 2, True, True)
    check_parity(kind, ours, reference, make_input(True), lengths, with_state=True)


@pytest.mark.parametrize("kind", KINDS)
def test_float32_within_1e5(kind):
    torch.manual_seed(2)
    ours, reference = make_pair(kind, 2, True, True, dtype=torch.float32, input_size=16, hidden_size=32)
    x = make_input(True, torch.float32, batch=6, steps=30, size=16)
    check_parity(kind, ours, reference, x, [30, 12, 25, 1, 30, 7], with_state=True, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_and_init_match_torch(kind):
    ours_class, torch_class = KINDS[kind]
    torch.manual_seed(3)
    ours = ours_class(INPUT, HIDDEN, num_layers=2, bidirectional=True)
    torch.manual_seed(3)
    reference = torch_class(INPUT, HIDDEN, num_layers=2, bidirectional=True, batch_first=True)
    ours_state, torch_state = ours.state_dict(), reference.state_dict()
    assert list(ours_state) == list(torch_state)
    for name in torch_state:  # same registration order and init, so the same seed draws the same weights
        torch.testing.assert_close(ours_state[name], torch_state[name], atol=0, rtol=0)
    reference.load_state_dict(ours_state)


@pytest.mark.parametrize("kind", KINDS)
def test_padding_never_leaks(kind):
    torch.manual_seed(4)
    ours, _ = make_pair(kind, 2, True, True)
    x = make_input(True)
    lengths = torch.tensor(LENGTHS)
    output, final = ours(x, lengths=lengths)
    padded = torch.arange(STEPS)[None, :] >= lengths[:, None]  # (B, T)
    assert torch.equal(output[padded], torch.zeros_like(output[padded]))

    garbage = x.detach().clone()
    garbage[padded] = float("nan")
    garbage.requires_grad_(True)
    garbage_output, garbage_final = ours(garbage, lengths=lengths)
    torch.testing.assert_close(garbage_output, output, atol=0, rtol=0)
    for garbage_value, value in zip(final_tensors(garbage_final), final_tensors(final), strict=True):
        torch.testing.assert_close(garbage_value, value, atol=0, rtol=0)
    (grad,) = torch.autograd.grad(garbage_output.sum(), garbage)
    assert torch.equal(grad[padded], torch.zeros_like(grad[padded]))


@pytest.mark.parametrize("kind", KINDS)
def test_dropout_between_layers_like_torch(kind):
    torch.manual_seed(5)
    ours, reference = make_pair(kind, 3, True, True, dropout=0.5)
    x = make_input(True)

    first, _ = ours(x)
    second, _ = ours(x)
    assert not torch.allclose(first, second), "train mode must draw a new dropout mask per call"
    # torch's CPU RNN draws its mask with the same dropout call on the same layer output, so equal seeds
    # give equal masks: train-mode parity with dropout > 0
    torch.manual_seed(6)
    ours_output, _ = ours(x)
    torch.manual_seed(6)
    torch_output, _ = reference(x)
    torch.testing.assert_close(ours_output, torch_output, atol=1e-10, rtol=0)

    ours.eval()
    reference.eval()
    eval_output, _ = ours(x)
    torch.testing.assert_close(ours(x)[0], eval_output, atol=0, rtol=0)
    check_parity(kind, ours, reference, x, LENGTHS)


def test_dropout_statistics_like_torch():
    """Whatever the RNG order, the mean and spread over many masks must match torch's (right rate and scale)."""
    torch.manual_seed(7)
    ours, reference = make_pair("lstm", 2, False, True, dropout=0.3, dtype=torch.float32, hidden_size=16)
    x = torch.randn(64, 4, INPUT)
    with torch.no_grad():
        ours_outputs = torch.stack([ours(x)[0] for _ in range(100)])
        torch_outputs = torch.stack([reference(x)[0] for _ in range(100)])
        eval_output = ours.eval()(x)[0]
    assert not torch.allclose(ours_outputs.mean(0), eval_output, atol=1e-3)
    torch.testing.assert_close(ours_outputs.mean((0, 1)), torch_outputs.mean((0, 1)), atol=0.01, rtol=0)
    torch.testing.assert_close(ours_outputs.std((0, 1)), torch_outputs.std((0, 1)), atol=0.01, rtol=0)


def test_lengths_as_list_and_truncated_batch():
    """lengths may be a list; when every sequence is shorter than T the tail is zeros and states still match."""
    torch.manual_seed(8)
    ours, reference = make_pair("lstm", 1, True, True)
    check_parity("lstm", ours, reference, make_input(True), [4, 2, 4, 3])
    output, _ = ours(make_input(True), lengths=[4, 4, 4, 4])
    assert torch.equal(output[:, 4:], torch.zeros_like(output[:, 4:]))


@pytest.mark.parametrize("num_layers, bidirectional, batch_first", CONFIGS)
@pytest.mark.parametrize("lengths", [None, LENGTHS])
def test_no_grad_inference_path_matches_torch(num_layers, bidirectional, batch_first, lengths):
    """Under torch.no_grad() the LSTM runs its lean inference loop (_lstm_infer): outputs and final states must
    still equal nn.LSTM's, with an initial state and with padding."""
    torch.manual_seed(9)
    ours, reference = make_pair("lstm", num_layers, bidirectional, batch_first)
    x = make_input(batch_first)
    state = tuple(torch.randn(num_layers * (2 if bidirectional else 1), BATCH, HIDDEN, dtype=torch.float64) for _ in range(2))
    with torch.no_grad():
        output, (h_n, c_n) = ours(x, lengths=lengths, state=state)
        torch_output, (torch_h, torch_c) = run_reference(reference, x, lengths, state)
    for ours_tensor, torch_tensor in ((output, torch_output), (h_n, torch_h), (c_n, torch_c)):
        torch.testing.assert_close(ours_tensor, torch_tensor, atol=1e-12, rtol=0)
