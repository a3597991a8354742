"""models/transformer.py against torch.nn: same weights -> same outputs and gradients (inputs and parameters).

Dropout is 0 wherever outputs are compared; "eval" runs with autograd on, which keeps torch off its
inference fast path; the fast path itself is compared separately, on non-padded positions only.
"""
import math
import warnings

import pytest
import torch
from torch import nn

from models.transformer import (AttentionPool, CLSToken, MultiheadAttention, SinusoidalPositions,
                                TransformerEncoder, TransformerEncoderLayer, masked_mean, padding_mask)

TOL = dict(atol=1e-5, rtol=1e-5)


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: see conftest.py

BATCH, QUERY_LEN, KEY_LEN, EMBED, HEADS = 3, 5, 7, 16, 4


def run_both(ours, theirs, call, inputs):
    """call(module, *inputs) -> tuple of tensors, on both modules with separate input copies; compare the
    outputs, then backprop one random cotangent through both and compare input and parameter gradients."""
    ours_inputs = [t.detach().clone().requires_grad_() for t in inputs]
    theirs_inputs = [t.detach().clone().requires_grad_() for t in inputs]
    ours_outputs, theirs_outputs = call(ours, *ours_inputs), call(theirs, *theirs_inputs)
    for ours_output, theirs_output in zip(ours_outputs, theirs_outputs):
        torch.testing.assert_close(ours_output, theirs_output, **TOL)
    cotangents = [torch.randn_like(output) for output in theirs_outputs]
    sum((o * c).sum() for o, c in zip(ours_outputs, cotangents)).backward()
    sum((o * c).sum() for o, c in zip(theirs_outputs, cotangents)).backward()
    for ours_input, theirs_input in zip(ours_inputs, theirs_inputs):
        torch.testing.assert_close(ours_input.grad, theirs_input.grad, **TOL)
    theirs_params = dict(theirs.named_parameters())
    for name, param in ours.named_parameters():
        torch.testing.assert_close(param.grad, theirs_params[name].grad, **TOL, msg=name)


def make_masks(kind: str, *, query_len: int, key_len: int, per_head: bool = False):
    """(key_padding_mask, attn_mask) of the given kind; every query keeps key 0, so no row is fully masked."""
    generator = torch.Generator().manual_seed(1)
    lengths = torch.tensor([key_len, key_len - 2, 3])
    padding = padding_mask(lengths, key_len)  # (B, S)
    blocked_shape = (BATCH * HEADS, query_len, key_len) if per_head else (query_len, key_len)
    blocked = torch.rand(blocked_shape, generator=generator) < 0.3
    blocked[..., 0] = False
    if kind.endswith("float"):
        # finite random biases as well as -inf, so that "added to the scores" is really tested
        padding = torch.randn(padding.shape, generator=generator).masked_fill(padding, float("-inf"))
        blocked = torch.randn(blocked_shape, generator=generator).masked_fill(blocked, float("-inf"))
    key_padding_mask = padding if kind.startswith(("padding", "both")) else None
    attn_mask = blocked if kind.startswith(("attn", "both")) else None
    return key_padding_mask, attn_mask


MASK_KINDS = ["none", "padding_bool", "padding_float", "attn_bool", "attn_float", "attn_bool_per_head",
              "both_bool", "both_float"]


@pytest.mark.parametrize("mask_kind", MASK_KINDS)
@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("self_attention", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_multihead_attention_matches_torch(mask_kind, need_weights, self_attention, training):
    torch.manual_seed(0)
    theirs = nn.MultiheadAttention(EMBED, HEADS, batch_first=True).train(training)
    with torch.no_grad():  # torch starts its biases at zero; make them count
        theirs.in_proj_bias.normal_()
        theirs.out_proj.bias.normal_()
    ours = MultiheadAttention(EMBED, HEADS).train(training)
    ours.load_state_dict(theirs.state_dict())
    query_len = KEY_LEN if self_attention else QUERY_LEN
    key_padding_mask, attn_mask = make_masks(mask_kind, query_len=query_len, key_len=KEY_LEN,
                                             per_head=mask_kind.endswith("per_head"))

    def call(module, *inputs):
        query, key, value = (inputs[0],) * 3 if self_attention else inputs
        output, weights = module(query, key, value, key_padding_mask=key_padding_mask, attn_mask=attn_mask,
                                 need_weights=need_weights)
        return (output, weights) if need_weights else (output,)

    inputs = ([torch.randn(BATCH, KEY_LEN, EMBED)] if self_attention else
              [torch.randn(BATCH, QUERY_LEN, EMBED), torch.randn(BATCH, KEY_LEN, EMBED),
               torch.randn(BATCH, KEY_LEN, EMBED)])
    run_both(ours, theirs, call, inputs)


def test_multihead_attention_without_bias_matches_torch():
    torch.manual_seed(0)
    theirs = nn.MultiheadAttention(EMBED, HEADS, bias=False, batch_first=True)
    ours = MultiheadAttention(EMBED, HEADS, bias=False)
    ours.load_state_dict(theirs.state_dict())
    key_padding_mask, _ = make_masks("padding_bool", query_len=KEY_LEN, key_len=KEY_LEN)
    run_both(ours, theirs, lambda m, x: (m(x, x, x, key_padding_mask=key_padding_mask, need_weights=False)[0],),
             [torch.randn(BATCH, KEY_LEN, EMBED)])


def test_fully_masked_rows_give_out_proj_bias_like_torch_without_weights():
    """A sequence that is all padding: torch (need_weights=False) and we return out_proj.bias there, with
    finite gradients; our weights for such rows are 0 (torch's need_weights=True path gives NaN)."""
    torch.manual_seed(0)
    theirs = nn.MultiheadAttention(EMBED, HEADS, batch_first=True)
    with torch.no_grad():
        theirs.out_proj.bias.normal_()
    ours = MultiheadAttention(EMBED, HEADS)
    ours.load_state_dict(theirs.state_dict())
    key_padding_mask = padding_mask(torch.tensor([KEY_LEN, 0, 2]), KEY_LEN)
    run_both(ours, theirs, lambda m, x: (m(x, x, x, key_padding_mask=key_padding_mask, need_weights=False)[0],),
             [torch.randn(BATCH, KEY_LEN, EMBED)])

    x = torch.randn(BATCH, KEY_LEN, EMBED, requires_grad=True)
    output, weights = ours(x, x, x, key_padding_mask=key_padding_mask, need_weights=True)
    torch.testing.assert_close(output[1], ours.out_proj.bias.expand(KEY_LEN, -1))
    assert torch.equal(weights[1], torch.zeros(KEY_LEN, KEY_LEN))
    output.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in ours.parameters()) and torch.isfinite(x.grad).all()


def test_multihead_attention_inference_fast_path_on_real_positions():
    torch.manual_seed(0)
    theirs = nn.MultiheadAttention(EMBED, HEADS, batch_first=True).eval()
    ours = MultiheadAttention(EMBED, HEADS).eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(BATCH, KEY_LEN, EMBED)
    key_padding_mask, _ = make_masks("padding_bool", query_len=KEY_LEN, key_len=KEY_LEN)
    with torch.no_grad():
        ours_output = ours(x, x, x, key_padding_mask=key_padding_mask)[0]
        theirs_output = theirs(x, x, x, key_padding_mask=key_padding_mask, need_weights=False)[0]
    real = ~key_padding_mask
    torch.testing.assert_close(ours_output[real], theirs_output[real], **TOL)


def torch_layer(*, norm_first, activation, dropout=0.0):
    return nn.TransformerEncoderLayer(EMBED, HEADS, dim_feedforward=32, dropout=dropout, activation=activation,
                                      batch_first=True, norm_first=norm_first)


def randomise_norms_and_biases(module):
    """torch starts LayerNorms at (1, 0) and attention biases at 0, which would hide wiring mistakes."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "norm" in name or "bias" in name:
                param.add_(0.3 * torch.randn_like(param))


@pytest.mark.parametrize("mask_kind", ["none", "padding_bool", "attn_bool", "attn_float", "both_bool",
                                       "both_float"])
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("training", [True, False])
def test_encoder_layer_matches_torch(mask_kind, norm_first, activation, training):
    torch.manual_seed(0)
    theirs = torch_layer(norm_first=norm_first, activation=activation).train(training)
    randomise_norms_and_biases(theirs)
    ours = TransformerEncoderLayer(EMBED, HEADS, dim_feedforward=32, dropout=0.0, activation=activation,
                                   norm_first=norm_first).train(training)
    ours.load_state_dict(theirs.state_dict())
    key_padding_mask, attn_mask = make_masks(mask_kind, query_len=KEY_LEN, key_len=KEY_LEN)
    run_both(ours, theirs, lambda m, x: (m(x, src_key_padding_mask=key_padding_mask, src_mask=attn_mask),),
             [torch.randn(BATCH, KEY_LEN, EMBED)])


def test_encoder_layer_with_dropout_matches_torch_in_eval():
    torch.manual_seed(0)
    theirs = torch_layer(norm_first=False, activation="relu", dropout=0.3).eval()
    ours = TransformerEncoderLayer(EMBED, HEADS, dim_feedforward=32, dropout=0.3).eval()
    ours.load_state_dict(theirs.state_dict())
    key_padding_mask, _ = make_masks("padding_bool", query_len=KEY_LEN, key_len=KEY_LEN)
    run_both(ours, theirs, lambda m, x: (m(x, src_key_padding_mask=key_padding_mask),),
             [torch.randn(BATCH, KEY_LEN, EMBED)])


def make_encoders(*, norm_first, activation, enable_nested_tensor=False):
    with warnings.catch_warnings():  # torch warns that norm_first disables its nested-tensor path
        warnings.simplefilter("ignore")
        theirs = nn.TransformerEncoder(torch_layer(norm_first=norm_first, activation=activation), num_layers=3,
                                       norm=nn.LayerNorm(EMBED), enable_nested_tensor=enable_nested_tensor)
    randomise_norms_and_biases(theirs)
    ours = TransformerEncoder(d_model=EMBED, nhead=HEADS, num_layers=3, dim_feedforward=32, dropout=0.0,
                              activation=activation, norm_first=norm_first, final_norm=True)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


@pytest.mark.parametrize("norm_first,activation", [(False, "relu"), (True, "gelu")])
@pytest.mark.parametrize("training", [True, False])
def test_encoder_stack_with_final_norm_matches_torch(norm_first, activation, training):
    # enable_nested_tensor=False: in eval mode torch would otherwise pack padded batches into nested
    # tensors and return zeros at padded positions (see the fast-path test below)
    torch.manual_seed(0)
    ours, theirs = make_encoders(norm_first=norm_first, activation=activation)
    ours.train(training), theirs.train(training)
    key_padding_mask, _ = make_masks("padding_bool", query_len=KEY_LEN, key_len=KEY_LEN)
    causal = torch.triu(torch.ones(KEY_LEN, KEY_LEN, dtype=torch.bool), diagonal=1)

    def call(module, x):  # torch's stack calls the attention mask `mask`, its layer and ours `src_mask`
        mask_argument = {"src_mask" if isinstance(module, TransformerEncoder) else "mask": causal}
        return (module(x, src_key_padding_mask=key_padding_mask, **mask_argument),)

    run_both(ours, theirs, call, [torch.randn(BATCH, KEY_LEN, EMBED)])


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_encoder_stack_matches_torch_fast_path_on_real_positions():
    """torch's inference fast path (eval, no grad, nested tensors) zeroes padded positions; compare the rest."""
    torch.manual_seed(0)
    ours, theirs = make_encoders(norm_first=False, activation="relu", enable_nested_tensor=True)
    ours.eval(), theirs.eval()
    key_padding_mask, _ = make_masks("padding_bool", query_len=KEY_LEN, key_len=KEY_LEN)
    x = torch.randn(BATCH, KEY_LEN, EMBED)
    with torch.no_grad():
        ours_output = ours(x, src_key_padding_mask=key_padding_mask)
        theirs_output = theirs(x, src_key_padding_mask=key_padding_mask)
    real = ~key_padding_mask
    torch.testing.assert_close(ours_output[real], theirs_output[real], **TOL)


def test_final_norm_defaults_to_norm_first():
    assert TransformerEncoder(d_model=8, nhead=2, num_layers=1, norm_first=True).norm is not None
    assert TransformerEncoder(d_model=8, nhead=2, num_layers=1, norm_first=False).norm is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, batch_first=True), num_layers=2)
    TransformerEncoder(d_model=8, nhead=2, num_layers=2).load_state_dict(theirs.state_dict())


@pytest.mark.parametrize("d_model", [6, 7])
def test_sinusoidal_positions_match_formula_and_extend_past_max_len(d_model):
    positions = SinusoidalPositions(d_model, max_len=16)
    length = 40  # past max_len: the table grows
    encoded = positions(torch.zeros(2, length, d_model))
    assert encoded.shape == (2, length, d_model)
    expected = torch.tensor([[math.sin(t / 10000 ** (dim / d_model)) if dim % 2 == 0
                              else math.cos(t / 10000 ** ((dim - 1) / d_model)) for dim in range(d_model)]
                             for t in range(length)])
    torch.testing.assert_close(encoded[0], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(encoded[1], expected, atol=1e-6, rtol=0)
    far = SinusoidalPositions(d_model)(torch.zeros(1, 9000, d_model))[0, 8999]
    far_expected = torch.tensor([math.sin(8999 / 10000 ** (dim / d_model)) if dim % 2 == 0
                                 else math.cos(8999 / 10000 ** ((dim - 1) / d_model)) for dim in range(d_model)])
    torch.testing.assert_close(far, far_expected, atol=1e-6, rtol=0)
    x = torch.randn(2, 5, d_model)
    torch.testing.assert_close(positions(x) - x, expected[:5].expand(2, -1, -1))
    assert positions.state_dict() == {}


def test_padding_mask_and_cls_token():
    mask = padding_mask(torch.tensor([3, 1, 0]), 4)
    assert torch.equal(mask, torch.tensor([[0, 0, 0, 1], [0, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.bool))
    assert padding_mask(torch.tensor([2, 5])).shape == (2, 5)

    cls = CLSToken(8)
    x = torch.randn(3, 4, 8)
    with_cls, with_cls_mask = cls(x, key_padding_mask=mask)
    assert with_cls.shape == (3, 5, 8) and with_cls_mask.shape == (3, 5)
    assert torch.equal(with_cls[:, 1:], x)
    assert torch.equal(with_cls[:, 0], cls.token[0].expand(3, -1))
    assert not with_cls_mask[:, 0].any() and torch.equal(with_cls_mask[:, 1:], mask)
    assert cls(x)[1] is None


def test_masked_mean_against_loop_and_all_padded_row():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 4)
    mask = padding_mask(torch.tensor([5, 2, 0]), 5)
    x_poisoned = x.masked_fill(mask[:, :, None], float("nan"))  # padded values must not matter
    x_poisoned.requires_grad_()
    pooled = masked_mean(x_poisoned, mask)
    for b in range(3):
        real_rows = [x[b, t] for t in range(5) if not mask[b, t]]
        expected = torch.stack(real_rows).mean(0) if real_rows else torch.zeros(4)
        torch.testing.assert_close(pooled[b], expected)
    pooled.sum().backward()
    assert torch.isfinite(x_poisoned.grad).all()
    torch.testing.assert_close(masked_mean(x, None), x.mean(1))


def test_attention_pool_ignores_padding():
    torch.manual_seed(0)
    pool = AttentionPool(4)
    x = torch.randn(3, 5, 4)
    mask = padding_mask(torch.tensor([5, 2, 0]), 5)
    pooled = pool(x, key_padding_mask=mask)
    changed = x.masked_fill(mask[:, :, None], 1e4)
    torch.testing.assert_close(pool(changed, key_padding_mask=mask), pooled, atol=0, rtol=0)
    poisoned = x.masked_fill(mask[:, :, None], float("nan")).requires_grad_()
    pool(poisoned, key_padding_mask=mask).sum().backward()
    assert torch.isfinite(poisoned.grad).all() and torch.isfinite(pool.score.weight.grad).all()
    # a manual softmax over real positions
    scores = x[1, :2] @ pool.score.weight[0] + pool.score.bias
    torch.testing.assert_close(pooled[1], torch.softmax(scores, 0) @ x[1, :2])
    assert torch.equal(pooled[2], torch.zeros(4))
    torch.testing.assert_close(pool(x), torch.softmax(pool.score(x).squeeze(-1), 1)[:, None, :].matmul(x)[:, 0])
