"""Masks: their values, and their effect through the whole model (causality, padding invariance)."""

import pytest
import torch

from tformer.models.transformer import Transformer, TransformerConfig
from tformer.nn.masks import Unpadded, causal_mask, combine, lengths_mask, padding_mask, unpad_if_worthwhile


# --------------------------------------------------------------------------------------------------
# Values


def test_padding_mask_values_and_shape():
    ids = torch.tensor([[5, 6, 0, 0], [7, 0, 8, 0]])
    m = padding_mask(ids, 0)
    assert m.dtype == torch.bool
    assert m.shape == (2, 1, 1, 4)
    assert m[:, 0, 0].tolist() == [[True, True, False, False], [True, False, True, False]]


def test_padding_mask_other_pad_id():
    ids = torch.tensor([[0, 3, 3]])
    assert padding_mask(ids, 3)[0, 0, 0].tolist() == [True, False, False]


def test_causal_mask_square():
    m = causal_mask(4)
    assert m.dtype == torch.bool and m.shape == (4, 4)
    expected = [[True, False, False, False],
                [True, True, False, False],
                [True, True, True, False],
                [True, True, True, True]]
    assert m.tolist() == expected
    for i in range(4):
        for j in range(4):
            assert bool(m[i, j]) == (j <= i)


def test_causal_mask_rectangular_sees_all_past():
    # Two new queries at the end of a sequence of 5 keys: query i sees keys j <= i + 3.
    m = causal_mask(2, 5)
    assert m.shape == (2, 5)
    assert m.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    # A single query step with a cache sees everything.
    assert causal_mask(1, 7).all()


def test_lengths_mask_values():
    m = lengths_mask(torch.tensor([2, 0, 4]), 4)
    assert m.shape == (3, 1, 1, 4)
    assert m[:, 0, 0].tolist() == [[True, True, False, False], [False] * 4, [True] * 4]


def test_lengths_mask_equals_padding_mask():
    ids = torch.tensor([[4, 5, 6, 0, 0], [4, 0, 0, 0, 0], [4, 5, 6, 7, 8]])
    lengths = (ids != 0).sum(1)
    assert torch.equal(lengths_mask(lengths, 5), padding_mask(ids, 0))


def test_combine():
    assert combine() is None
    assert combine(None, None) is None
    pad = padding_mask(torch.tensor([[4, 5, 0], [4, 0, 0]]), 0)  # (2, 1, 1, 3)
    causal = causal_mask(3)  # (3, 3)
    assert combine(pad) is pad
    assert combine(None, causal, None) is causal
    both = combine(pad, None, causal)
    assert both.shape == (2, 1, 3, 3)
    assert both[0, 0].tolist() == [[True, False, False], [True, True, False], [True, True, False]]
    assert both[1, 0].tolist() == [[True, False, False]] * 3
    assert torch.equal(both, pad & causal)


# --------------------------------------------------------------------------------------------------
# Through the model


def _model(**kw) -> Transformer:
    torch.manual_seed(0)
    cfg = dict(src_vocab_size=20, tgt_vocab_size=20, d_model=16, n_heads=2, d_ff=32, n_encoder_layers=2,
               n_decoder_layers=2, dropout=0.0)
    cfg.update(kw)
    return Transformer(TransformerConfig(**cfg)).eval()


@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_decoder_is_causal(norm_position):
    model = _model(norm_position=norm_position)
    src = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    tgt = torch.tensor([[1, 4, 5, 6, 7, 8], [1, 11, 12, 13, 14, 15]])
    with torch.no_grad():
        base = model(src, tgt).logits
        for t in range(tgt.size(1) - 1):
            changed = tgt.clone()
            changed[:, t + 1] = torch.where(changed[:, t + 1] == 17, 18, 17)
            out = model(src, changed).logits
            assert torch.allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-5), t
            assert not torch.allclose(out[:, t + 1], base[:, t + 1], atol=1e-4), t


def test_decoder_causal_with_attention_weights():
    model = _model()
    src = torch.tensor([[5, 6, 7]])
    tgt = torch.tensor([[1, 4, 5, 6]])
    with torch.no_grad():
        out = model(src, tgt, need_weights=True)
    for w in out.decoder_attentions:
        assert w.shape == (1, 2, 4, 4)
        assert torch.all(w.triu(diagonal=1) == 0)
    for w in out.cross_attentions:
        assert w.shape == (1, 2, 4, 3)


@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_extra_source_padding_changes_nothing(norm_position):
    model = _model(norm_position=norm_position)
    src = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]])
    padded = torch.cat([src, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    tgt = torch.tensor([[1, 4, 5], [1, 6, 7]])
    with torch.no_grad():
        a = model(src, tgt).logits
        b = model(padded, tgt).logits
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_encoder_real_positions_unaffected_by_padding(norm_position):
    model = _model(norm_position=norm_position)
    src = torch.tensor([[5, 6, 7]])
    padded = torch.tensor([[5, 6, 7, 0, 0, 0, 0]])
    with torch.no_grad():
        mem, mask = model.encode(src)
        mem_p, mask_p = model.encode(padded)
    assert mask_p[0, 0, 0].tolist() == [True] * 3 + [False] * 4
    assert torch.allclose(mem, mem_p[:, :3], atol=1e-5)


def test_batched_with_padding_equals_unbatched():
    model = _model()
    short_src, long_src = [5, 6], [7, 8, 9, 10]
    short_tgt, long_tgt = [1, 11, 12], [1, 13]
    src = torch.tensor([short_src + [0, 0], long_src])
    tgt = torch.tensor([short_tgt, long_tgt + [0]])
    with torch.no_grad():
        batched = model(src, tgt).logits
        alone_short = model(torch.tensor([short_src]), torch.tensor([short_tgt])).logits
        alone_long = model(torch.tensor([long_src]), torch.tensor([long_tgt])).logits
    assert torch.allclose(batched[0], alone_short[0], atol=1e-5)
    # Target padding: real positions of the shorter target are unchanged.
    assert torch.allclose(batched[1, :2], alone_long[0], atol=1e-5)


def test_source_tokens_do_matter():
    # Sanity check for the invariance tests above: a real token change does change the output.
    model = _model()
    tgt = torch.tensor([[1, 4, 5]])
    with torch.no_grad():
        a = model(torch.tensor([[5, 6, 7]]), tgt).logits
        b = model(torch.tensor([[5, 6, 8]]), tgt).logits
    assert not torch.allclose(a, b, atol=1e-4)


def test_unpadded_packs_real_tokens_and_its_gradients_are_exact():
    torch.manual_seed(0)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True], [True, False, False, False]])
    u = Unpadded(mask)
    x = torch.randn(3, 4, 2, dtype=torch.double, requires_grad=True)
    packed = u.unpad(x)
    assert packed.shape == (7, 2) and torch.equal(packed, x[mask])
    repadded = u.pad(packed)
    assert torch.equal(repadded[mask], x[mask]) and not repadded[~mask].any()  # zeros at padding
    # Gather and scatter are each other's gradient (a copy, not a scatter-add): checked numerically.
    assert torch.autograd.gradcheck(lambda t: u.pad(u.unpad(t).sin()), (x,))
    rows = torch.randn(7, 2, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda r: u.unpad(u.pad(r) * torch.arange(4.0, dtype=torch.double)[:, None]),
                                    (rows,))


@pytest.mark.parametrize("count_first", [True, False])  # the CPU order and the GPU order
def test_unpadding_only_batches_with_enough_padding(count_first):
    mask = torch.ones(4, 25, dtype=torch.bool)
    mask[0, 17:] = False  # 8 of 100 positions are padding: exactly the threshold
    kept = unpad_if_worthwhile(mask, 0.08, count_first=count_first)
    assert kept is not None and kept.tokens == 92
    assert torch.equal(kept.index, mask.reshape(-1).nonzero().squeeze(1))
    mask[0, 17] = True  # 7%: stays padded
    assert unpad_if_worthwhile(mask, 0.08, count_first=count_first) is None


# --------------------------------------------------------------------------------------------------
# What the blocks and models refuse, or read the way transformers' callers mean it


def test_attention_refuses_a_float_mask_on_both_paths():
    """A float mask would be added to the scores by the fused kernel (zeros = attend everywhere) and not be
    understood by the explicit path: both name the dtype instead of computing something else."""
    from tformer.errors import TformerError
    from tformer.nn.attention import masked_softmax, scaled_dot_product_attention

    q = k = v = torch.randn(1, 2, 3, 4)
    for need_weights in (False, True):
        with pytest.raises(TformerError, match="boolean tensor.*float32"):
            scaled_dot_product_attention(q, k, v, torch.zeros(3, 3), need_weights=need_weights)
    with pytest.raises(TformerError, match="boolean"):
        masked_softmax(torch.randn(2, 3), torch.ones(2, 3, dtype=torch.long))


def test_cross_attention_refuses_batches_that_do_not_divide():
    from tformer.errors import TformerError
    from tformer.nn.attention import MultiHeadAttention

    mha = MultiHeadAttention(8, 2)
    with pytest.raises(TformerError, match="3 query rows for a context of 2"):
        mha(torch.randn(3, 4, 8), context=torch.randn(2, 5, 8))
    assert mha(torch.randn(4, 4, 8), context=torch.randn(2, 5, 8))[0].shape == (4, 4, 8)  # beam search's K = 2
    model = Transformer(TransformerConfig(src_vocab_size=10, tgt_vocab_size=10, d_model=8, n_heads=2, d_ff=16,
                                          n_encoder_layers=1, n_decoder_layers=1))
    with pytest.raises(TformerError, match="2 source rows for 4 target rows"):
        model(torch.randint(3, 10, (2, 5)), torch.randint(3, 10, (4, 3)))


def test_integer_attention_masks_read_as_transformers_tokenizers_mean_them():
    from tformer.errors import TformerError
    from tformer.models.bert import BertConfig, BertModel
    from tformer.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    ids = torch.randint(5, 30, (2, 6))
    real = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    bert = BertModel(BertConfig(vocab_size=30, max_len=16, d_model=16, n_heads=2, n_layers=1, d_ff=32)).eval()
    gpt = GPT(GPTConfig(vocab_size=30, max_len=16, d_model=16, n_heads=2, n_layers=1)).eval()
    left = real.flip(1)  # generation pads on the left
    for model, mask in ((bert, real), (gpt, left)):
        as_bool = model(ids, attention_mask=mask.bool())
        for given in (mask, mask.float(), mask.int()):
            out = model(ids, attention_mask=given)
            got, want = (out.hidden, as_bool.hidden) if model is bert else (out.logits, as_bool.logits)
            torch.testing.assert_close(got, want)
        with pytest.raises(TformerError, match="other than 0 and 1"):
            model(ids, attention_mask=(mask - 1).float() * 1e9)  # an additive mask is not a token mask


def test_models_name_ids_and_selectors_they_cannot_use():
    from tformer.errors import TformerError
    from tformer.models.bert import BertConfig, BertForPreTraining, BertModel
    from tformer.models.gpt import GPT, GPTConfig

    gpt = GPT(GPTConfig(vocab_size=30, max_len=8, d_model=16, n_heads=2, n_layers=1))
    bert = BertModel(BertConfig(vocab_size=30, max_len=8, d_model=16, n_heads=2, n_layers=1, d_ff=32))
    cases = [
        (lambda: gpt(torch.tensor([[1, 30]])), "token ids: 30 is outside 0..29"),
        (lambda: gpt(torch.tensor([[-1, 2]])), "token ids: -1 is outside"),
        (lambda: gpt(torch.tensor([[1.0, 2.0]])), "must be integers"),
        (lambda: gpt(torch.tensor([[1, 2]]), positions=torch.tensor([[7, 8]])), "positions: 8 is outside 0..7"),
        (lambda: gpt(torch.tensor([[1, 2]]), keep=torch.tensor([[0, 1]])), "keep must be a boolean"),
        (lambda: bert(torch.tensor([[1, 99]])), "token ids: 99"),
        (lambda: bert(torch.tensor([[1, 2]]), torch.tensor([[0, 2]])), "type_ids: 2 is outside 0..1"),
        (lambda: bert(torch.zeros(1, 0, dtype=torch.long)), "empty sequence"),
        (lambda: BertForPreTraining(bert.config)(torch.tensor([[1, 2]]), mlm_positions=torch.tensor([[0, 1]])),
         "mlm_positions must be a boolean"),
    ]
    for call, needle in cases:
        with pytest.raises(TformerError, match=needle.replace(".", r"\.")):
            call()
    no_segments = BertModel(BertConfig(vocab_size=30, max_len=8, d_model=16, n_heads=2, n_layers=1, d_ff=32,
                                       type_vocab_size=0))
    with pytest.raises(TformerError, match="no segment embeddings"):
        no_segments(torch.tensor([[1, 2]]), torch.tensor([[0, 0]]))
