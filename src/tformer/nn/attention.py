"""Attention, from the lectures' score functions to multi-head scaled dot-product attention.

Shapes: B batch, H heads, T query length, S key/value length, D model width (d_model),
Dh = d_k = d_v = D / H, the width of one head.

Score functions of a decoder state s against encoder states h (Luong et al. 2015, Bahdanau et al. 2015):
    dot            score(s, h) = s . h
    multiplicative score(s, h) = s^T W h
    additive       score(s, h) = v^T tanh(W1 h + W2 s)
Scaled dot-product attention (Vaswani et al. 2017, eq. 1): softmax(Q K^T / sqrt(d_k) + mask) V.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tformer.errors import TformerError
from tformer.nn.cache import AttentionCache
from tformer.nn.dropout import dropout, keep_mask
from tformer.nn.linear import Linear, linear
from tformer.nn.masks import Unpadded, check_boolean

# ---------------------------------------------------------------------------------------------------
# Score functions over one decoder state s (..., Ds) and n encoder states h (..., n, Dh) -> (..., n)


def dot_scores(s: Tensor, h: Tensor) -> Tensor:
    """score(s, h_i) = s . h_i for every encoder state h_i."""
    return (h @ s.unsqueeze(-1)).squeeze(-1)


class MultiplicativeScore(nn.Module):
    """score(s, h_i) = s^T W h_i (Luong's "general" score); W maps encoder width to decoder width."""

    def __init__(self, d_decoder: int, d_encoder: int):
        super().__init__()
        self.W = nn.Parameter(torch.empty(d_decoder, d_encoder))
        nn.init.xavier_uniform_(self.W)

    def forward(self, s: Tensor, h: Tensor) -> Tensor:
        return dot_scores(s @ self.W, h)


class AdditiveScore(nn.Module):
    """score(s, h_i) = v^T tanh(W1 h_i + W2 s) (Bahdanau's "concat" score)."""

    def __init__(self, d_decoder: int, d_encoder: int, d_attn: int):
        super().__init__()
        self.W1 = nn.Linear(d_encoder, d_attn, bias=False)
        self.W2 = nn.Linear(d_decoder, d_attn, bias=True)
        self.v = nn.Linear(d_attn, 1, bias=False)

    def forward(self, s: Tensor, h: Tensor) -> Tensor:
        return self.v(torch.tanh(self.W1(h) + self.W2(s).unsqueeze(-2))).squeeze(-1)


def masked_softmax(scores: Tensor, mask: Tensor | None) -> Tensor:
    """Softmax over the last axis with masked scores at -inf; a row with every key masked gives zeros."""
    check_boolean(mask)
    if mask is None:
        return torch.softmax(scores, dim=-1)
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    # softmax of an all -inf row is 0/0 = NaN; such a query attends to nothing, so its weights are 0.
    return weights.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)


def attend(scores: Tensor, values: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Attention distribution alpha = softmax(scores) and context sum_i alpha_i v_i.

    scores (..., n), values (..., n, Dv), mask (..., n) True = may attend -> context (..., Dv), alpha (..., n)
    """
    alpha = masked_softmax(scores, mask)
    return (alpha.unsqueeze(-2) @ values).squeeze(-2), alpha


# ---------------------------------------------------------------------------------------------------
# Scaled dot-product attention: the explicit path (returns weights) and the fused path.


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    dropout_p: float = 0.0,
    need_weights: bool = False,
    training: bool = False,
    is_causal: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """softmax(Q K^T / sqrt(d_k) + mask) V.

    q (B, H, T, Dh), k and v (B, H, S, Dh), mask broadcastable to (B, H, T, S), True = may attend.
    is_causal (with T == S and no mask): query i attends to keys 0..i, without building a mask; on CUDA
    this is what lets the flash kernel run.
    need_weights=True takes the explicit path, which reads like the equation and returns the
    weights (B, H, T, S); otherwise PyTorch's fused kernel computes the same numbers faster.
    """
    if is_causal and (mask is not None or q.size(-2) != k.size(-2)):
        raise ValueError("is_causal needs no mask and as many queries as keys; pass a causal mask instead")
    check_boolean(mask)  # a float mask would be added to the scores by the fused kernel only
    if need_weights:
        if is_causal:
            mask = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool, device=q.device).tril()
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, H, T, S)
        weights = masked_softmax(scores, mask)
        dropped = dropout(weights, dropout_p, training) if dropout_p > 0 and training else weights
        return dropped @ v, weights
    if training and dropout_p > 0 and q.device.type == "cpu" and 0 < dropout_p < 1:
        # torch's fused CPU kernels have no dropout: with attention dropout SDPA falls back to a generic path
        # whose per-element Bernoulli draws and temporaries cost more than the matmuls. Same numbers, faster.
        if is_causal:
            mask = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool, device=q.device).tril()
        return _DropoutAttention.apply(q, k, v, mask, dropout_p), None
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p if training else 0.0,
                                         is_causal=is_causal)
    if mask is not None:
        # Fully masked rows: some kernels give NaN, the explicit path gives 0; make both give 0.
        # On a CPU the check is cheap and the fill rarely runs; on a GPU asking would wait for the device, so fill.
        empty = ~mask.any(dim=-1, keepdim=True)
        if out.device.type != "cpu" or bool(empty.any()):
            out = out.masked_fill(empty, 0.0)
    return out, None


class _DropoutAttention(torch.autograd.Function):
    """softmax(Q K^T / sqrt(d_k) + mask) with dropout on the weights, times V, with a hand-written backward.

    Saves Q, K, V, the weights and the boolean drop mask; the backward reuses its buffers in place:
        dV = P~^T dO,   dP = (dO V^T) o keep,   dS = P o (dP - rowsum(dP o P)) / sqrt(d_k),
        dQ = dS K,      dK = dS^T Q,            with P~ = P o keep / (1 - p).
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, p: float) -> Tensor:
        scale = 1.0 / math.sqrt(q.size(-1))
        # Heads split from one projection are strided views; matmul would copy them at every use
        # (twice more in the backward). Copy once and keep the copies for the backward.
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        scores = torch.matmul(q, k.transpose(-2, -1)).mul_(scale)  # (B, H, T, S)
        if mask is not None:
            scores.masked_fill_(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        del scores
        if mask is not None:
            empty = ~mask.any(dim=-1, keepdim=True)
            if bool(empty.any()):
                weights.masked_fill_(empty, 0.0)  # a query with no key to attend to gets zeros, not NaN
        drop = ~keep_mask(weights.shape, p, weights.device)
        out = torch.matmul(weights.masked_fill(drop, 0.0), v).mul_(1.0 / (1.0 - p))
        ctx.save_for_backward(q, k, v, weights, drop)
        ctx.p, ctx.scale = p, scale
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, k, v, weights, drop = ctx.saved_tensors
        grad_out = grad_out.contiguous() * (1.0 / (1.0 - ctx.p))
        grad_v = torch.matmul(weights.masked_fill(drop, 0.0).transpose(-2, -1), grad_out)
        grad_w = torch.matmul(grad_out, v.transpose(-2, -1)).masked_fill_(drop, 0.0)
        row = (grad_w * weights).sum(dim=-1, keepdim=True)
        grad_s = grad_w.sub_(row).mul_(weights).mul_(ctx.scale)  # softmax backward, in place
        grad_q = torch.matmul(grad_s, k)
        grad_k = torch.matmul(grad_s.transpose(-2, -1), q)
        return grad_q, grad_k, grad_v, None, None


def _check_mask_shape(mask: Tensor, q: Tensor, k: Tensor) -> None:
    """A mask broadcasts to the scores (B, H, T, S): each of its last four sizes is 1 or the scores' own. A
    2-D mask is (T, S), shared by every row; a padding mask is (B, 1, 1, S)."""
    scores = (q.size(0), q.size(1), q.size(2), k.size(2))
    if mask.dim() > 4 or any(m not in (1, n) for m, n in zip(reversed(mask.shape), reversed(scores))):
        raise TformerError(f"attention: a mask of shape {tuple(mask.shape)} does not broadcast to the scores "
                           f"(batch, heads, queries, keys) = {scores}; a padding mask is (batch, 1, 1, keys), "
                           "a 2-D mask is (queries, keys)")


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1..head_h) W^O, head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V).

    The h per-head projections W_i^Q (D x Dh each) are stored stacked as one D x D matrix per role, and
    the three roles side by side in `in_proj` (3D x D), so self-attention does one matmul for Q, K and V.
    Cross-attention (`context` given) projects queries with the first D rows and keys/values with the rest.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if d_model <= 0 or n_heads <= 0:
            raise ValueError(f"d_model and n_heads must be positive, not {d_model} and {n_heads}")
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
        self.dropout = dropout
        self.in_proj = Linear(d_model, 3 * d_model, bias=bias)  # [W^Q; W^K; W^V]
        self.out_proj = Linear(d_model, d_model, bias=bias)  # W^O

    def _split_heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.d_head).transpose(1, 2)  # (B, T, D) -> (B, H, T, Dh)

    def _project_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        d = self.d_model
        bias = self.in_proj.bias[d:] if self.in_proj.bias is not None else None
        k, v = linear(context, self.in_proj.weight[d:], bias).chunk(2, dim=-1)
        return self._split_heads(k), self._split_heads(v)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        cache: AttentionCache | None = None,
        need_weights: bool = False,
        is_causal: bool = False,
        unpadded: Unpadded | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """x (B, T, D) queries; context (B, S, D) keys/values for cross-attention (None: self-attention).

        unpadded: x is (N, D), the real tokens of a padded batch without its padding (self-attention only);
        the projections run on those N rows and only the score matrix sees the padded (B, T) layout.

        mask broadcasts to (B, H, T, S) with True = may attend; is_causal instead of a mask: each query
        attends to itself and earlier positions (self-attention over a whole sequence, no cache). For cross-attention x may hold K rows per
        context row (beam search's hypotheses of one source), consecutive in the batch. With a cache,
        self-attention appends this step's keys/values to those of earlier steps, and cross-attention
        projects `context` only once.
        Returns (B, T, D) and, when need_weights, the attention weights (B, H, T, S); with K query rows per
        context row, (B / K, H, K * T, S): each context row's queries side by side.
        """
        d = self.d_model
        if unpadded is not None:
            return self._forward_unpadded(x, mask, unpadded, need_weights)
        for name, t in (("x", x), ("context", context)):
            if t is not None and (t.dim() != 3 or t.size(-1) != d):
                raise TformerError(f"attention: {name} must be (batch, length, d_model={d}), not {tuple(t.shape)}")
        n_rows = x.size(0)
        if context is not None and n_rows != context.size(0):
            if n_rows % context.size(0):
                raise TformerError(f"cross-attention: {n_rows} query rows for a context of {context.size(0)}; "
                                   "the batch sizes must match (or be K rows per context row, as in beam search)")
            # Beam search: the K hypotheses of one source share its encoder output, so their queries are
            # attended together, as one K*T-long query, against a single copy of its keys and values.
            x = x.reshape(context.size(0), -1, d)  # (B*K, T, D) -> (B, K*T, D)
        if context is None:
            q, k, v = self.in_proj(x).chunk(3, dim=-1)
            q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
            if cache is not None:
                k, v = cache.append(k, v)
        else:
            bias = self.in_proj.bias[:d] if self.in_proj.bias is not None else None
            q = self._split_heads(linear(x, self.in_proj.weight[:d], bias))
            if cache is not None:
                if not cache.filled:
                    cache.set(*self._project_kv(context))
                k, v = cache.get()
            else:
                k, v = self._project_kv(context)
        if mask is not None:
            _check_mask_shape(mask, q, k)
        out, weights = scaled_dot_product_attention(
            q, k, v, mask, self.dropout, need_weights=need_weights, training=self.training, is_causal=is_causal
        )
        b, _, t, _ = out.shape
        out = out.transpose(1, 2).reshape(b, t, d)  # (B, H, T, Dh) -> (B, T, D): concatenate the heads
        out = self.out_proj(out)
        if out.size(0) != n_rows:
            out = out.reshape(n_rows, -1, d)  # (B, K*T, D) -> (B*K, T, D)
        return out, weights

    def _forward_unpadded(self, x: Tensor, mask: Tensor | None, unpadded: Unpadded,
                          need_weights: bool) -> tuple[Tensor, Tensor | None]:
        qkv = unpadded.pad(self.in_proj(x))  # (N, 3D) -> (B, T, 3D), zeros at padding
        q, k, v = (self._split_heads(t) for t in qkv.chunk(3, dim=-1))
        out, weights = scaled_dot_product_attention(q, k, v, mask, self.dropout, need_weights=need_weights,
                                                    training=self.training)
        b, _, t, _ = out.shape
        out = unpadded.unpad(out.transpose(1, 2).reshape(b, t, self.d_model))  # (B, T, D) -> (N, D)
        return self.out_proj(out), weights
