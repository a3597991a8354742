"""Multi-head attention and a transformer encoder written from the math, plus positions, CLS token, pooling.

Everything is batch-first: sequences are (B, T, D). Parameter names and shapes are those of torch's
nn.MultiheadAttention, nn.TransformerEncoderLayer and nn.TransformerEncoder (batch_first=True), so state
dicts load in both directions; tests/test_transformer.py checks outputs and gradients against torch.

Masks follow torch: a bool mask is True where attention is NOT allowed; a float mask is added to the
attention scores. key_padding_mask is (B, S); attn_mask is (L, S) or (B * num_heads, L, S).

Fully masked rows (a query allowed to see no key at all, e.g. a sequence that is all padding): that row's
attention weights are all 0, so the attention output there is 0 and MultiheadAttention returns
out_proj.bias. This equals torch's MultiheadAttention with need_weights=False (its scaled-dot-product
kernel uses a "safe softmax"); torch's need_weights=True path and its inference fast path give NaN
there instead. Our gradients stay finite. Pool with masked_mean / AttentionPool or a CLS token so such
rows never reach a loss.
"""
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def masked_softmax(scores: Tensor, dim: int = -1) -> Tensor:
    """Softmax over `dim`, except that a slice which is entirely -inf gives zeros instead of NaN."""
    fully_masked = (scores == float("-inf")).all(dim=dim, keepdim=True)
    # filling before the softmax keeps NaN out of the backward pass too
    weights = torch.softmax(scores.masked_fill(fully_masked, 0.0), dim=dim)
    return weights.masked_fill(fully_masked, 0.0)


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Bool mask (True = blocked) -> 0 / -inf scores; a float mask is already additive."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


class MultiheadAttention(nn.Module):
    """Scaled dot-product attention over num_heads heads: softmax(Q K^T / sqrt(head_dim) + mask) V.

    Same parameters as nn.MultiheadAttention (in_proj_weight (3E, E) packing W_q, W_k, W_v;
    in_proj_bias (3E); out_proj), batch_first. forward returns (output (B, L, E), weights) where
    weights are the attention probabilities actually applied (after dropout, as torch) averaged over
    heads, (B, L, S), or None unless need_weights.
    """

    def __init__(self, embed_dim: int, num_heads: int, *, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim)) if bias else None
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        # torch's initialisation
        nn.init.xavier_uniform_(self.in_proj_weight)
        if bias:
            nn.init.zeros_(self.in_proj_bias)
            nn.init.zeros_(self.out_proj.bias)

    def _split_heads(self, projected: Tensor) -> Tensor:
        batch_size, length, _ = projected.shape
        # (B, T, E) -> (B, heads, T, head_dim)
        return projected.view(batch_size, length, self.num_heads, self.head_dim).transpose(1, 2)

    def _score_bias(self, key_padding_mask, attn_mask, batch_size, query_len, key_len, dtype):
        """Both masks as one additive term broadcastable to the scores (B, heads, L, S), or None."""
        score_bias = None
        if attn_mask is not None:
            if attn_mask.shape == (query_len, key_len):
                score_bias = _additive(attn_mask, dtype)[None, None]  # (L, S) -> (1, 1, L, S)
            elif attn_mask.shape == (batch_size * self.num_heads, query_len, key_len):
                # (B * heads, L, S) -> (B, heads, L, S), batch-major as in torch
                score_bias = _additive(attn_mask, dtype).view(batch_size, self.num_heads, query_len, key_len)
            else:
                raise ValueError(f"attn_mask shape {tuple(attn_mask.shape)}: expected ({query_len}, {key_len}) "
                                 f"or ({batch_size * self.num_heads}, {query_len}, {key_len})")
        if key_padding_mask is not None:
            if key_padding_mask.shape != (batch_size, key_len):
                raise ValueError(f"key_padding_mask shape {tuple(key_padding_mask.shape)}: "
                                 f"expected ({batch_size}, {key_len})")
            padding_bias = _additive(key_padding_mask, dtype)[:, None, None, :]  # (B, S) -> (B, 1, 1, S)
            score_bias = padding_bias if score_bias is None else score_bias + padding_bias
        return score_bias

    def forward(self, query: Tensor, key: Tensor, value: Tensor, *, key_padding_mask: Tensor | None = None,
                attn_mask: Tensor | None = None, need_weights: bool = False):
        batch_size, query_len, _ = query.shape
        key_len = key.shape[1]
        weight_q, weight_k, weight_v = self.in_proj_weight.chunk(3)
        bias_q, bias_k, bias_v = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None,) * 3
        queries = self._split_heads(F.linear(query, weight_q, bias_q))  # (B, heads, L, head_dim)
        keys = self._split_heads(F.linear(key, weight_k, bias_k))  # (B, heads, S, head_dim)
        values = self._split_heads(F.linear(value, weight_v, bias_v))  # (B, heads, S, head_dim)

        scores = (queries * self.head_dim ** -0.5) @ keys.transpose(-2, -1)  # (B, heads, L, S)
        score_bias = self._score_bias(key_padding_mask, attn_mask, batch_size, query_len, key_len, scores.dtype)
        if score_bias is not None:
            scores = scores + score_bias
        weights = F.dropout(masked_softmax(scores), p=self.dropout, training=self.training)
        attended = weights @ values  # (B, heads, L, head_dim)
        # (B, heads, L, head_dim) -> (B, L, E)
        attended = attended.transpose(1, 2).reshape(batch_size, query_len, self.embed_dim)
        return self.out_proj(attended), (weights.mean(dim=1) if need_weights else None)


class TransformerEncoderLayer(nn.Module):
    """Self-attention block then feed-forward block, each with a residual and LayerNorm.

    norm_first=False (post-LN, Vaswani):  x = norm1(x + attn(x));        x = norm2(x + ff(x))
    norm_first=True  (pre-LN):            x = x + attn(norm1(x));        x = x + ff(norm2(x))
    Parameter names match nn.TransformerEncoderLayer (self_attn, linear1, linear2, norm1, norm2).
    """

    def __init__(self, d_model: int, nhead: int, *, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: str = "relu", norm_first: bool = False, layer_norm_eps: float = 1e-5):
        super().__init__()
        activations = {"relu": F.relu, "gelu": F.gelu}
        if activation not in activations:
            raise ValueError(f"activation must be one of {sorted(activations)}, got {activation!r}")
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = activations[activation]
        self.norm_first = norm_first

    def _attention_block(self, x: Tensor, key_padding_mask, attn_mask) -> Tensor:
        attended, _ = self.self_attn(x, x, x, key_padding_mask=key_padding_mask, attn_mask=attn_mask)
        return self.dropout1(attended)

    def _feedforward_block(self, x: Tensor) -> Tensor:
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def forward(self, src: Tensor, *, src_key_padding_mask: Tensor | None = None,
                src_mask: Tensor | None = None) -> Tensor:
        x = src
        if self.norm_first:
            x = x + self._attention_block(self.norm1(x), src_key_padding_mask, src_mask)
            x = x + self._feedforward_block(self.norm2(x))
        else:
            x = self.norm1(x + self._attention_block(x, src_key_padding_mask, src_mask))
            x = self.norm2(x + self._feedforward_block(x))
        return x


class TransformerEncoder(nn.Module):
    """num_layers TransformerEncoderLayers and an optional final LayerNorm (`norm`).

    Parameter names match nn.TransformerEncoder (layers.0.…, norm.…). final_norm=None means
    "final norm exactly when norm_first": a pre-LN stack needs one, a post-LN stack already ends in one.
    """

    def __init__(self, *, d_model: int, nhead: int, num_layers: int, dim_feedforward: int = 2048,
                 dropout: float = 0.1, activation: str = "relu", norm_first: bool = False,
                 layer_norm_eps: float = 1e-5, final_norm: bool | None = None):
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(d_model, nhead, dim_feedforward=dim_feedforward, dropout=dropout,
                                    activation=activation, norm_first=norm_first, layer_norm_eps=layer_norm_eps)
            for _ in range(num_layers))
        if final_norm is None:
            final_norm = norm_first
        self.norm = nn.LayerNorm(d_model, eps=layer_norm_eps) if final_norm else None

    def forward(self, src: Tensor, *, src_key_padding_mask: Tensor | None = None,
                src_mask: Tensor | None = None) -> Tensor:
        x = src
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=src_key_padding_mask, src_mask=src_mask)
        return self.norm(x) if self.norm is not None else x


def sinusoidal_table(length: int, d_model: int) -> Tensor:
    """(length, d_model) float32: [t, 2i] = sin(t / 10000^(2i/d)), [t, 2i+1] = cos(same).

    Computed in float64 so positions in the thousands are still accurate to ~1e-7 after the cast.
    """
    positions = torch.arange(length, dtype=torch.float64)[:, None]  # (T, 1)
    inverse_wavelengths = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float64)
                                    * (-math.log(10000.0) / d_model))  # (ceil(d/2),)
    angles = positions * inverse_wavelengths  # (T, ceil(d/2))
    table = torch.empty(length, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : d_model // 2])
    return table.float()


class SinusoidalPositions(nn.Module):
    """Adds the fixed sin/cos position encoding (Vaswani et al.) to x (B, T, D).

    max_len only sizes the cached table; a longer input grows it, so any T works. The table is a
    non-persistent buffer: it follows .to(device) but is not part of the state dict.
    """

    def __init__(self, d_model: int, *, max_len: int = 10000):
        super().__init__()
        self.d_model = d_model
        self.register_buffer("table", sinusoidal_table(max_len, d_model), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        length = x.shape[1]
        if length > self.table.shape[0]:
            self.table = sinusoidal_table(length, self.d_model).to(self.table.device)
        return x + self.table[:length].to(x.dtype)


def padding_mask(lengths: Tensor, max_len: int | None = None) -> Tensor:
    """Bool (B, max_len), True at padding: position t of sequence b is padding when t >= lengths[b]."""
    if max_len is None:
        max_len = int(lengths.max()) if lengths.numel() else 0
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]


class CLSToken(nn.Module):
    """Prepends one learned token: (B, T, D) -> (B, T + 1, D); the padding mask gets a False in front."""

    def __init__(self, d_model: int):
        super().__init__()
        self.token = nn.Parameter(torch.randn(1, 1, d_model) * 0.02)

    def forward(self, x: Tensor, *, key_padding_mask: Tensor | None = None):
        batch_size = x.shape[0]
        with_cls = torch.cat([self.token.expand(batch_size, -1, -1).to(x.dtype), x], dim=1)  # (B, T+1, D)
        if key_padding_mask is None:
            return with_cls, None
        cls_is_real = torch.zeros(batch_size, 1, dtype=torch.bool, device=key_padding_mask.device)
        return with_cls, torch.cat([cls_is_real, key_padding_mask], dim=1)  # (B, T+1)


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of x (B, T, D) over its non-padding positions (mask (B, T), True = padding) -> (B, D).

    A row that is all padding gives 0. Padded values never matter, even if they are inf or NaN.
    """
    if mask is None:
        return x.mean(dim=1)
    kept = x.masked_fill(mask[:, :, None], 0.0)
    counts = (~mask).sum(dim=1, keepdim=True).clamp(min=1).to(x.dtype)  # (B, 1)
    return kept.sum(dim=1) / counts


class AttentionPool(nn.Module):
    """Weighted sum over time with learned scores: w = softmax_t(q · x_t + b) over non-padding t.

    x (B, T, D), key_padding_mask (B, T) True = padding -> (B, D). All-padding rows give 0.
    """

    def __init__(self, d_model: int):
        super().__init__()
        self.score = nn.Linear(d_model, 1)  # its weight is the learned query q

    def forward(self, x: Tensor, *, key_padding_mask: Tensor | None = None) -> Tensor:
        if key_padding_mask is not None:
            # zero padded values before scoring so that not even a NaN there reaches the gradients
            x = x.masked_fill(key_padding_mask[:, :, None], 0.0)
        scores = self.score(x).squeeze(-1)  # (B, T)
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask, float("-inf"))
        weights = masked_softmax(scores, dim=1)  # (B, T)
        return (weights[:, :, None] * x).sum(dim=1)
