"""Attention: the lectures' worked examples, score functions by hand, explicit vs fused paths, multi-head."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tformer.nn.attention import (
    AdditiveScore,
    MultiHeadAttention,
    MultiplicativeScore,
    attend,
    dot_scores,
    masked_softmax,
    scaled_dot_product_attention,
)
from tformer.nn.masks import causal_mask, padding_mask


S = torch.tensor([10.0, 5.0, 10.0])
H = torch.tensor([[0.0, 1.0, 1.0], [5.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 5.0, 1.0]])


# --------------------------------------------------------------------------------------------------
# The lectures' worked examples


def test_dot_scores_worked_example():
    scores = dot_scores(S, H)
    assert scores.shape == (4,)
    assert torch.equal(scores, torch.tensor([15.0, 60.0, 15.0, 35.0]))


def test_dot_scores_batched():
    s = torch.stack([S, 2 * S])  # (2, 3)
    h = torch.stack([H, H])  # (2, 4, 3)
    assert torch.equal(dot_scores(s, h), torch.tensor([[15.0, 60.0, 15.0, 35.0], [30.0, 120.0, 30.0, 70.0]]))


def test_attend_worked_example():
    context, alpha = attend(dot_scores(S, H), H)
    assert alpha.shape == (4,) and context.shape == (3,)
    assert torch.allclose(alpha, torch.tensor([0.0, 1.0, 0.0, 0.0]), atol=1e-6)
    assert torch.allclose(context, torch.tensor([5.0, 0.0, 1.0]), atol=1e-5)
    assert math.isclose(alpha.sum().item(), 1.0, rel_tol=1e-6)


def test_attend_with_mask_redistributes_weight():
    # Hide the winning state h_2: the next best (35, h_4) takes nearly all the weight.
    mask = torch.tensor([True, False, True, True])
    context, alpha = attend(dot_scores(S, H), H, mask)
    assert alpha[1] == 0.0
    assert torch.allclose(alpha, torch.tensor([0.0, 0.0, 0.0, 1.0]), atol=1e-6)
    assert torch.allclose(context, H[3], atol=1e-5)


def test_scaled_scores_worked_example():
    # Raw scores 112 and 96 with d_k = 64: divided by sqrt(64) = 8 they become 14 and 12.
    d = 64
    q = torch.ones(1, 1, 1, d)
    k = torch.stack([torch.full((d,), 112.0 / d), torch.full((d,), 96.0 / d)]).view(1, 1, 2, d)
    assert torch.allclose((q @ k.transpose(-2, -1)).flatten(), torch.tensor([112.0, 96.0]))
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).expand(1, 1, 2, 2).contiguous()
    v = torch.nn.functional.pad(v, (0, d - 2))
    out, weights = scaled_dot_product_attention(q, k, v, need_weights=True)
    expected = torch.softmax(torch.tensor([14.0, 12.0]), dim=0)
    assert weights.shape == (1, 1, 1, 2)
    assert torch.allclose(weights.flatten(), expected, atol=1e-6)
    assert abs(weights.flatten()[0].item() - 0.88) < 0.005
    assert abs(weights.flatten()[1].item() - 0.12) < 0.005
    # The output is the weighted mix of the values.
    assert torch.allclose(out.flatten()[:2], expected, atol=1e-6)
    fused, none = scaled_dot_product_attention(q, k, v, need_weights=False)
    assert none is None
    assert torch.allclose(fused, out, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Score functions against hand computation


def test_multiplicative_score_by_hand():
    torch.manual_seed(0)
    score = MultiplicativeScore(d_decoder=3, d_encoder=5)
    s = torch.randn(3)
    h = torch.randn(4, 5)
    expected = torch.stack([s @ score.W @ h[i] for i in range(4)])
    assert torch.allclose(score(s, h), expected, atol=1e-5)


def test_multiplicative_score_identity_is_dot():
    score = MultiplicativeScore(3, 3)
    with torch.no_grad():
        score.W.copy_(torch.eye(3))
    assert torch.allclose(score(S, H), torch.tensor([15.0, 60.0, 15.0, 35.0]))


def test_additive_score_by_hand():
    torch.manual_seed(1)
    score = AdditiveScore(d_decoder=3, d_encoder=5, d_attn=7)
    s = torch.randn(3)
    h = torch.randn(4, 5)
    W1, W2, b2, v = score.W1.weight, score.W2.weight, score.W2.bias, score.v.weight.squeeze(0)
    expected = torch.stack([v @ torch.tanh(W1 @ h[i] + W2 @ s + b2) for i in range(4)])
    out = score(s, h)
    assert out.shape == (4,)
    assert torch.allclose(out, expected, atol=1e-5)


def test_additive_score_batched_matches_unbatched():
    torch.manual_seed(2)
    score = AdditiveScore(3, 5, 7)
    s = torch.randn(2, 3)
    h = torch.randn(2, 4, 5)
    out = score(s, h)
    assert out.shape == (2, 4)
    for b in range(2):
        assert torch.allclose(out[b], score(s[b], h[b]), atol=1e-6)


# --------------------------------------------------------------------------------------------------
# masked_softmax


def test_masked_softmax_rows_sum_to_one_and_zero_where_masked():
    torch.manual_seed(3)
    scores = torch.randn(5, 6)
    mask = torch.rand(5, 6) > 0.4
    mask[0] = False  # fully masked row
    mask[1] = True
    w = masked_softmax(scores, mask)
    assert not torch.isnan(w).any()
    assert torch.equal(w[0], torch.zeros(6))
    assert torch.all(w[~mask] == 0)
    rows = mask.any(dim=-1)
    assert torch.allclose(w[rows].sum(-1), torch.ones(int(rows.sum())), atol=1e-6)
    # Unmasked row equals plain softmax.
    assert torch.allclose(w[1], torch.softmax(scores[1], -1))


def test_masked_softmax_none_is_softmax():
    scores = torch.randn(3, 4)
    assert torch.allclose(masked_softmax(scores, None), torch.softmax(scores, -1))


# --------------------------------------------------------------------------------------------------
# Explicit path (need_weights=True) == fused path


def _qkv(b=2, h=2, t=4, s=5, dh=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, t, dh, generator=g), torch.randn(b, h, s, dh, generator=g),
            torch.randn(b, h, s, dh, generator=g))


def _masks(b=2, t=4, s=5):
    ids = torch.tensor([[5, 6, 7, 0, 0], [5, 6, 7, 8, 9]])[:b, :s]
    pad = padding_mask(ids, 0)  # (B, 1, 1, S)
    causal = causal_mask(t, s)  # (T, S)
    return {"none": None, "padding": pad, "causal": causal, "combined": pad & causal}


@pytest.mark.parametrize("which", ["none", "padding", "causal", "combined"])
@pytest.mark.parametrize("training", [False, True])
def test_explicit_equals_fused(which, training):
    q, k, v = _qkv()
    mask = _masks()[which]
    explicit, weights = scaled_dot_product_attention(q, k, v, mask, dropout_p=0.0, need_weights=True,
                                                     training=training)
    fused, none = scaled_dot_product_attention(q, k, v, mask, dropout_p=0.0, need_weights=False,
                                               training=training)
    assert none is None
    assert weights.shape == (2, 2, 4, 5)
    assert torch.allclose(explicit, fused, atol=1e-5)
    # Weights are zero where masked and rows sum to 1.
    if mask is not None:
        assert torch.all(weights.masked_select(~mask.expand_as(weights)) == 0)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 2, 4), atol=1e-6)
    # The explicit path really is softmax(QK^T / sqrt(d)) V.
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    assert torch.allclose(explicit, torch.softmax(scores, -1) @ v, atol=1e-5)


def test_causal_mask_hides_future_in_attention():
    q, k, v = _qkv(t=5, s=5)
    out1, w = scaled_dot_product_attention(q, k, v, causal_mask(5), need_weights=True)
    assert torch.all(w.triu(diagonal=1) == 0)
    # Changing the last key/value changes nothing but the last query's output.
    k2, v2 = k.clone(), v.clone()
    k2[:, :, -1] += 3.0
    v2[:, :, -1] -= 2.0
    for need in (True, False):
        a, _ = scaled_dot_product_attention(q, k, v, causal_mask(5), need_weights=need)
        b, _ = scaled_dot_product_attention(q, k2, v2, causal_mask(5), need_weights=need)
        assert torch.allclose(a[:, :, :-1], b[:, :, :-1], atol=1e-6)
        assert not torch.allclose(a[:, :, -1], b[:, :, -1], atol=1e-3)


@pytest.mark.parametrize("need_weights", [True, False])
def test_fully_masked_rows_give_zeros(need_weights):
    q, k, v = _qkv()
    mask = torch.ones(2, 1, 4, 5, dtype=torch.bool)
    mask[0, 0, 2] = False  # query 2 of batch 0 may attend to nothing
    mask[1] = False  # batch 1 entirely masked
    out, weights = scaled_dot_product_attention(q, k, v, mask, need_weights=need_weights)
    assert not torch.isnan(out).any()
    assert torch.equal(out[0, :, 2], torch.zeros(2, 8))
    assert torch.equal(out[1], torch.zeros(2, 4, 8))
    assert out[0, :, 0].abs().sum() > 0
    if need_weights:
        assert not torch.isnan(weights).any()
        assert torch.equal(weights[1], torch.zeros(2, 4, 5))


@pytest.mark.parametrize("need_weights", [True, False])
def test_fully_masked_rows_padding_mask_all_pad(need_weights):
    q, k, v = _qkv()
    ids = torch.tensor([[0, 0, 0, 0, 0], [4, 5, 0, 0, 0]])
    out, _ = scaled_dot_product_attention(q, k, v, padding_mask(ids, 0), need_weights=need_weights)
    assert not torch.isnan(out).any()
    assert torch.equal(out[0], torch.zeros(2, 4, 8))
    assert out[1].abs().sum() > 0


@pytest.mark.parametrize("need_weights", [True, False])
def test_fully_masked_rows_have_finite_gradients(need_weights):
    q, k, v = (t.requires_grad_() for t in _qkv())
    mask = torch.ones(2, 1, 4, 5, dtype=torch.bool)
    mask[0, 0, 2] = False
    out, _ = scaled_dot_product_attention(q, k, v, mask, need_weights=need_weights)
    out.sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert torch.equal(q.grad[0, :, 2], torch.zeros(2, 8))


def test_dropout_in_training_only():
    q, k, v = _qkv()
    torch.manual_seed(0)
    eval_out, _ = scaled_dot_product_attention(q, k, v, dropout_p=0.5, need_weights=True, training=False)
    ref, _ = scaled_dot_product_attention(q, k, v, need_weights=True)
    assert torch.equal(eval_out, ref)
    train_out, w = scaled_dot_product_attention(q, k, v, dropout_p=0.5, need_weights=True, training=True)
    assert not torch.allclose(train_out, ref)
    # The returned weights are the undropped distribution.
    assert torch.allclose(w.sum(-1), torch.ones(2, 2, 4), atol=1e-6)
    fused_eval, _ = scaled_dot_product_attention(q, k, v, dropout_p=0.5, training=False)
    assert torch.allclose(fused_eval, ref, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(
    b=st.integers(1, 3), h=st.integers(1, 3), t=st.integers(1, 6), s=st.integers(1, 6), dh=st.integers(1, 8),
    mask_kind=st.sampled_from(["none", "random", "causal"]), seed=st.integers(0, 2**16),
)
def test_property_fused_equals_explicit(b, h, t, s, dh, mask_kind, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, t, dh, generator=g)
    k = torch.randn(b, h, s, dh, generator=g)
    v = torch.randn(b, h, s, dh, generator=g)
    if mask_kind == "none":
        mask = None
    elif mask_kind == "random":
        mask = torch.rand(b, 1, t, s, generator=g) > 0.3  # may contain fully masked rows
    else:
        mask = causal_mask(t, s)
    explicit, w = scaled_dot_product_attention(q, k, v, mask, need_weights=True)
    fused, _ = scaled_dot_product_attention(q, k, v, mask, need_weights=False)
    assert explicit.shape == fused.shape == (b, h, t, dh)
    assert not torch.isnan(fused).any() and not torch.isnan(explicit).any()
    assert torch.allclose(explicit, fused, atol=1e-5)
    if mask is not None:
        allowed = mask.expand(b, h, t, s).any(-1)
        sums = w.sum(-1)
        assert torch.allclose(sums[allowed], torch.ones_like(sums[allowed]), atol=1e-5)
        assert torch.all(sums[~allowed] == 0)


# --------------------------------------------------------------------------------------------------
# Multi-head attention against a hand-written per-head computation


def _by_hand(mha: MultiHeadAttention, x, context=None, mask=None):
    d, nh, dh = mha.d_model, mha.n_heads, mha.d_head
    W, bias = mha.in_proj.weight, mha.in_proj.bias
    WQ, WK, WV = W[:d], W[d:2 * d], W[2 * d:]
    bQ, bK, bV = bias[:d], bias[d:2 * d], bias[2 * d:]
    kv_src = x if context is None else context
    heads = []
    for i in range(nh):
        r = slice(i * dh, (i + 1) * dh)
        Q = x @ WQ[r].T + bQ[r]  # (B, T, dh)
        K = kv_src @ WK[r].T + bK[r]  # (B, S, dh)
        V = kv_src @ WV[r].T + bV[r]
        scores = Q @ K.transpose(-2, -1) / math.sqrt(dh)  # (B, T, S)
        if mask is not None:
            m = mask.expand(x.size(0), 1, x.size(1), kv_src.size(1))[:, 0]
            scores = scores.masked_fill(~m, float("-inf"))
        heads.append(torch.softmax(scores, -1) @ V)
    concat = torch.cat(heads, dim=-1)  # (B, T, d)
    return concat @ mha.out_proj.weight.T + mha.out_proj.bias, heads


def _mha(d=16, nh=4, seed=0):
    torch.manual_seed(seed)
    mha = MultiHeadAttention(d, nh)
    with torch.no_grad():  # nonzero biases so a misplaced bias would show
        mha.in_proj.bias.normal_()
        mha.out_proj.bias.normal_()
    return mha


@pytest.mark.parametrize("need_weights", [True, False])
def test_mha_self_attention_by_hand(need_weights):
    mha = _mha()
    x = torch.randn(2, 5, 16)
    out, weights = mha(x, need_weights=need_weights)
    expected, _ = _by_hand(mha, x)
    assert out.shape == (2, 5, 16)
    assert torch.allclose(out, expected, atol=1e-5)
    if need_weights:
        assert weights.shape == (2, 4, 5, 5)
    else:
        assert weights is None


@pytest.mark.parametrize("need_weights", [True, False])
def test_mha_self_attention_causal_by_hand(need_weights):
    mha = _mha(seed=1)
    x = torch.randn(2, 5, 16)
    mask = causal_mask(5)
    out, _ = mha(x, mask=mask, need_weights=need_weights)
    expected, _ = _by_hand(mha, x, mask=mask)
    assert torch.allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("need_weights", [True, False])
def test_mha_cross_attention_by_hand(need_weights):
    mha = _mha(seed=2)
    x = torch.randn(2, 3, 16)
    memory = torch.randn(2, 6, 16)
    ids = torch.tensor([[4, 5, 6, 7, 0, 0], [4, 5, 6, 7, 8, 9]])
    mask = padding_mask(ids, 0)
    out, weights = mha(x, context=memory, mask=mask, need_weights=need_weights)
    expected, _ = _by_hand(mha, x, context=memory, mask=mask)
    assert out.shape == (2, 3, 16)
    assert torch.allclose(out, expected, atol=1e-5)
    if need_weights:
        assert weights.shape == (2, 4, 3, 6)
        assert torch.all(weights[0, :, :, 4:] == 0)
    # Padded memory positions have no influence.
    memory2 = memory.clone()
    memory2[0, 4:] = torch.randn(2, 16) * 10
    out2, _ = mha(x, context=memory2, mask=mask, need_weights=need_weights)
    assert torch.allclose(out, out2, atol=1e-5)


def test_mha_cross_attention_differs_from_self_attention():
    mha = _mha(seed=3)
    x = torch.randn(1, 4, 16)
    self_out, _ = mha(x)
    cross_same, _ = mha(x, context=x)
    assert torch.allclose(self_out, cross_same, atol=1e-5)  # context == x is self-attention
    cross_other, _ = mha(x, context=torch.randn(1, 4, 16))
    assert not torch.allclose(self_out, cross_other, atol=1e-3)


def test_mha_heads_weights_match_hand_heads():
    mha = _mha(seed=4)
    x = torch.randn(1, 4, 16)
    _, weights = mha(x, need_weights=True)
    d, dh = 16, 4
    WQ, WK = mha.in_proj.weight[:d], mha.in_proj.weight[d:2 * d]
    bQ, bK = mha.in_proj.bias[:d], mha.in_proj.bias[d:2 * d]
    for i in range(4):
        r = slice(i * dh, (i + 1) * dh)
        Q, K = x @ WQ[r].T + bQ[r], x @ WK[r].T + bK[r]
        expected = torch.softmax(Q @ K.transpose(-2, -1) / math.sqrt(dh), -1)
        assert torch.allclose(weights[:, i], expected, atol=1e-5)


def test_mha_train_mode_dropout_zero_paths_agree():
    mha = _mha(seed=5).train()
    x = torch.randn(2, 5, 16)
    mask = causal_mask(5) & padding_mask(torch.tensor([[3, 4, 5, 0, 0], [3, 4, 5, 6, 7]]), 0)
    a, _ = mha(x, mask=mask, need_weights=True)
    b, _ = mha(x, mask=mask, need_weights=False)
    assert torch.allclose(a, b, atol=1e-5)


def test_mha_gradients_agree_between_paths():
    x = torch.randn(2, 4, 16)
    grads = []
    for need in (True, False):
        mha = _mha(seed=6)
        out, _ = mha(x, mask=causal_mask(4), need_weights=need)
        out.pow(2).sum().backward()
        grads.append(mha.in_proj.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-4)
    assert grads[0].abs().sum() > 0


def test_mha_rejects_indivisible_heads():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 3)


def test_mha_without_bias_by_hand():
    torch.manual_seed(7)
    mha = MultiHeadAttention(16, 2, bias=False)
    assert mha.in_proj.bias is None and mha.out_proj.bias is None
    x, memory = torch.randn(1, 3, 16), torch.randn(1, 4, 16)
    d, dh = 16, 8
    W = mha.in_proj.weight
    heads = []
    for i in range(2):
        r = slice(i * dh, (i + 1) * dh)
        Q, K, V = x @ W[:d][r].T, memory @ W[d:2 * d][r].T, memory @ W[2 * d:][r].T
        heads.append(torch.softmax(Q @ K.transpose(-2, -1) / math.sqrt(dh), -1) @ V)
    expected = torch.cat(heads, -1) @ mha.out_proj.weight.T
    out, _ = mha(x, context=memory)
    assert torch.allclose(out, expected, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Key/value caches: step-by-step decoding equals attention over the whole prefix


@pytest.mark.parametrize("need_weights", [True, False])
def test_self_attention_cache_equals_causal(need_weights):
    from tformer.nn.cache import AttentionCache

    mha = _mha(seed=8).eval()
    x = torch.randn(2, 70, 16)  # longer than the cache's first reservation (64), so it also grows
    full, _ = mha(x, mask=causal_mask(70), need_weights=need_weights)
    cache = AttentionCache()
    steps = []
    for t in range(70):
        out, _ = mha(x[:, t:t + 1], cache=cache, need_weights=need_weights)
        steps.append(out)
    assert cache.length == 70
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def test_cross_attention_cache_projects_once():
    from tformer.nn.cache import AttentionCache

    mha = _mha(seed=9).eval()
    x, memory = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    full, _ = mha(x, context=memory)
    cache = AttentionCache()
    outs = [mha(x[:, t:t + 1], context=memory, cache=cache)[0] for t in range(3)]
    assert torch.allclose(torch.cat(outs, 1), full, atol=1e-5)
    assert cache.length == 5
    # Later steps read the cached keys/values: a different context is ignored once the cache is filled.
    again, _ = mha(x[:, :1], context=torch.randn(2, 5, 16), cache=cache)
    assert torch.allclose(again, outs[0], atol=1e-6)


@pytest.mark.parametrize("causal", [True, False])
def test_cpu_attention_dropout_matches_autograd_with_the_same_mask(causal):
    """The hand-written backward of the CPU dropout path equals autograd through the same formula."""
    from tformer.nn.attention import scaled_dot_product_attention
    from tformer.nn.dropout import keep_mask

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 6, 4, requires_grad=True) for _ in range(3))
    mask = None if causal else torch.rand(2, 1, 6, 6) > 0.3
    mask_for_ref = torch.ones(6, 6, dtype=torch.bool).tril() if causal else mask
    torch.manual_seed(7)
    out, _ = scaled_dot_product_attention(q, k, v, mask, 0.25, training=True, is_causal=causal)
    grads = torch.autograd.grad((out * torch.arange(4.0)).sum(), (q, k, v))
    torch.manual_seed(7)
    weights = masked_softmax((q @ k.transpose(-2, -1)) / 2.0, mask_for_ref)
    keep = keep_mask(weights.shape, 0.25, weights.device)
    ref = (weights * keep / 0.75) @ v
    ref_grads = torch.autograd.grad((ref * torch.arange(4.0)).sum(), (q, k, v))
    torch.testing.assert_close(out, ref)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)
    assert 0.6 < keep.float().mean() < 0.9  # some weights really were dropped


def test_multi_head_attention_names_shapes_it_cannot_use():
    from tformer.errors import TformerError
    from tformer.nn.attention import MultiHeadAttention

    mha = MultiHeadAttention(8, 2)
    for kwargs, needle in (
        (dict(x=torch.randn(2, 5, 6)), r"x must be \(batch, length, d_model=8\), not \(2, 5, 6\)"),
        (dict(x=torch.randn(5, 8)), r"not \(5, 8\)"),
        (dict(x=torch.randn(2, 5, 8), context=torch.randn(2, 4)), "context must be"),
        (dict(x=torch.randn(2, 5, 8), mask=torch.ones(3, 5, dtype=torch.bool)),
         r"mask of shape \(3, 5\) does not broadcast to the scores .* \(2, 2, 5, 5\)"),
    ):
        with pytest.raises(TformerError, match=needle):
            mha(**kwargs)
    padding = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    assert mha(torch.randn(2, 5, 8), mask=padding)[0].shape == (2, 5, 8)
    with pytest.raises(ValueError, match="must be positive"):
        MultiHeadAttention(16, 0)
