"""The encoder-decoder Transformer: presets, parameter counts, gradients, tying/sharing, config checks,
`keep`, embedding scale, and where the layer norms sit."""

import itertools
import math

import pytest
import torch

from tformer.models.bert import BertConfig
from tformer.models.transformer import TokenEmbedding, Transformer, TransformerConfig
from tformer.nn.masks import padding_mask
from tformer.nn.positional import SinusoidalPositionalEncoding, sinusoidal_table
from tformer.registry import create_model, describe, get_config, list_models

SMALL_PRESETS = [n for n in list_models("transformer-*") if n not in ("transformer-base", "transformer-big")]


def _tiny(**kw) -> Transformer:
    torch.manual_seed(0)
    cfg = dict(src_vocab_size=23, tgt_vocab_size=19, d_model=16, n_heads=2, d_ff=32, n_encoder_layers=2,
               n_decoder_layers=2, dropout=0.1)
    cfg.update(kw)
    return Transformer(TransformerConfig(**cfg))


def _batch(src_vocab=23, tgt_vocab=19, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, src_vocab, (3, 7), generator=g)
    src[1, 5:] = 0
    src[2, 3:] = 0
    tgt = torch.randint(4, tgt_vocab, (3, 6), generator=g)
    tgt[:, 0] = 1
    tgt[2, 4:] = 0
    return src, tgt


# --------------------------------------------------------------------------------------------------
# Presets


def test_presets_are_listed():
    assert {"transformer-base", "transformer-big"} <= set(list_models("transformer-*"))
    assert SMALL_PRESETS, "expected at least one small preset"


@pytest.mark.parametrize("name", SMALL_PRESETS)
def test_small_preset_forward_backward(name):
    torch.manual_seed(0)
    model = create_model(name, src_vocab_size=23, tgt_vocab_size=19)
    model.train()
    src, tgt = _batch()
    out = model(src, tgt)
    assert out.logits.shape == (3, 6, 19)
    assert torch.isfinite(out.logits).all()
    loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 19), tgt.roll(-1, 1).reshape(-1),
                                             ignore_index=0)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0


def test_base_parameter_count():
    # transformer-base, 37000 shared vocabulary, tied output: 63,082,496 parameters (the paper says 65M).
    with torch.device("meta"):
        model = create_model("transformer-base", share_embeddings=True, src_vocab_size=37000,
                             tgt_vocab_size=37000)
    n = model.num_parameters()
    assert 60_000_000 <= n <= 66_000_000
    d, ff, v, N = 512, 2048, 37000, 6
    attn = 4 * d * d + 4 * d
    ffn = 2 * d * ff + ff + d
    expected = v * d + N * (attn + ffn + 2 * 2 * d) + N * (2 * attn + ffn + 3 * 2 * d)
    assert n == expected == 63_082_496


def test_big_parameter_count():
    # transformer-big, 37000 shared vocabulary, tied output: 214,245,376 parameters (the paper says 213M).
    with torch.device("meta"):
        model = create_model("transformer-big", share_embeddings=True)
    n = model.num_parameters()
    assert 200_000_000 <= n <= 220_000_000
    assert n == 214_245_376


def test_num_parameters_counts_shared_once():
    shared = _tiny(src_vocab_size=19, share_embeddings=True, tie_output=True)
    unshared = _tiny(src_vocab_size=19, share_embeddings=False, tie_output=False)
    assert unshared.num_parameters() - shared.num_parameters() == 2 * 19 * 16
    unique = {p.data_ptr(): p.numel() for p in shared.parameters()}
    assert shared.num_parameters() == sum(unique.values())


# --------------------------------------------------------------------------------------------------
# Gradients reach every parameter, in every combination of options

COMBOS = list(itertools.product(["post", "pre"], [True, False], [True, False], ["sinusoidal", "learned"]))


@pytest.mark.parametrize("norm_position,share,tie,positional", COMBOS)
def test_gradients_reach_every_parameter(norm_position, share, tie, positional):
    model = _tiny(src_vocab_size=19, norm_position=norm_position, share_embeddings=share, tie_output=tie,
                  positional=positional, max_len=16)
    model.train()
    src, tgt = _batch(19, 19)
    logits = model(src, tgt).logits
    assert logits.shape == (3, 6, 19)
    assert torch.isfinite(logits).all()
    logits.logsumexp(-1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    names = {n for n, _ in model.named_parameters()}
    assert any("positional" in n for n in names) == (positional == "learned")
    assert any(n.startswith("output.") for n in names) == (not tie)


# --------------------------------------------------------------------------------------------------
# Tying and sharing


def test_tie_output_ties():
    model = _tiny(tie_output=True)
    assert model.output.weight is model.tgt_embed.embedding.weight
    with torch.no_grad():
        model.tgt_embed.embedding.weight[5, 0] = 123.0
    assert model.output.weight[5, 0].item() == 123.0


def test_untied_output_is_separate():
    model = _tiny(tie_output=False)
    assert model.output.weight is not model.tgt_embed.embedding.weight
    assert model.output.weight.data_ptr() != model.tgt_embed.embedding.weight.data_ptr()


def test_share_embeddings_shares():
    model = _tiny(src_vocab_size=19, share_embeddings=True)
    assert model.src_embed.embedding is model.tgt_embed.embedding
    assert model.output.weight is model.src_embed.embedding.weight
    unshared = _tiny(src_vocab_size=19, share_embeddings=False)
    assert unshared.src_embed.embedding is not unshared.tgt_embed.embedding


def test_padding_embedding_row_is_zero():
    model = _tiny()
    assert torch.equal(model.src_embed.embedding.weight[0], torch.zeros(16))
    assert torch.equal(model.tgt_embed.embedding.weight[0], torch.zeros(16))


# --------------------------------------------------------------------------------------------------
# Invalid configurations


def test_invalid_configs_raise():
    with pytest.raises(ValueError, match="divisible"):
        TransformerConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="share_embeddings"):
        TransformerConfig(src_vocab_size=100, tgt_vocab_size=200, share_embeddings=True)
    with pytest.raises(ValueError):
        TransformerConfig(d_model=0)
    with pytest.raises(ValueError):
        TransformerConfig(dropout=1.0)
    with pytest.raises(ValueError, match="divisible"):
        get_config("transformer-micro", n_heads=5)


@pytest.mark.parametrize("make, needle", [
    (lambda: TransformerConfig(src_vocab_size=20, tgt_vocab_size=30, pad_id=25), "pad_id must be a token id below "
                                                                                 "src_vocab_size=20, not 25"),
    (lambda: TransformerConfig(src_vocab_size=20, tgt_vocab_size=30, pad_id=-1), "pad_id .* not -1"),
    (lambda: TransformerConfig(tgt_vocab_size=30, eos_id=30), "eos_id must be a token id below tgt_vocab_size=30"),
    (lambda: TransformerConfig(tgt_vocab_size=30, bos_id=-2), "bos_id"),
    (lambda: BertConfig(vocab_size=64, pad_id=100),
     "pad_id must be a token id below vocab_size=64"),
    (lambda: BertConfig(max_len=8, position_offset=8),
     "position_offset=8 leaves none of the max_len=8"),
])
def test_special_token_ids_and_offsets_must_fit_the_model(make, needle):
    """An id outside the embedding fails later inside nn.Embedding (or builds a model that refuses every input)."""
    with pytest.raises(ValueError, match=needle):
        make()


def test_config_roundtrip():
    cfg = TransformerConfig(d_model=16, n_heads=2, norm_position="pre")
    d = cfg.to_dict()
    assert d["model_type"] == "transformer"
    assert TransformerConfig.from_dict(d) == cfg
    assert cfg.d_k == 8


# --------------------------------------------------------------------------------------------------
# keep


def test_keep_returns_logits_of_kept_positions():
    model = _tiny().eval()
    src, tgt = _batch()
    keep = tgt != 0
    with torch.no_grad():
        full = model(src, tgt).logits
        kept = model(src, tgt, keep=keep).logits
    assert kept.shape == (int(keep.sum()), 19)
    assert torch.allclose(kept, full[keep], atol=1e-6)
    # An arbitrary selection too.
    sel = torch.zeros_like(keep)
    sel[0, 2] = sel[1, 5] = True
    with torch.no_grad():
        two = model(src, tgt, keep=sel).logits
    assert torch.allclose(two, torch.stack([full[0, 2], full[1, 5]]), atol=1e-6)


def test_encode_decode_equal_forward():
    model = _tiny().eval()
    src, tgt = _batch()
    with torch.no_grad():
        memory, src_mask = model.encode(src)
        assert torch.equal(src_mask, padding_mask(src, 0))
        assert torch.allclose(model.decode(tgt, memory, src_mask), model(src, tgt).logits, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Embedding scale


def test_token_embedding_scaled_by_sqrt_d():
    torch.manual_seed(0)
    d = 16
    emb = torch.nn.Embedding(11, d)
    te = TokenEmbedding(emb, SinusoidalPositionalEncoding(d, 32), dropout=0.0)
    ids = torch.tensor([[3, 4, 5, 6], [7, 8, 9, 10]])
    out = te(ids)
    expected = emb.weight[ids] * math.sqrt(d) + sinusoidal_table(4, d)
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(te(ids, offset=3), emb.weight[ids] * 4.0 + sinusoidal_table(7, d)[3:], atol=1e-6)


def test_model_embeddings_scaled_by_sqrt_d():
    model = _tiny(dropout=0.0).train()  # dropout 0: train mode changes nothing
    src, _ = _batch()
    out = model.src_embed(src)
    expected = model.src_embed.embedding.weight[src] * math.sqrt(16) + sinusoidal_table(7, 16)
    assert torch.allclose(out, expected, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Where the layer norms are


def _row_stats(x):
    return x.mean(-1), x.std(-1, unbiased=False)


def test_post_ln_encoder_layer_output_is_normalised():
    model = _tiny(norm_position="post", dropout=0.0).eval()
    src, _ = _batch()
    x = model.src_embed(src)
    out, _ = model.encoder.layers[0](x, padding_mask(src, 0))
    mean, std = _row_stats(out)
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-5)
    assert torch.allclose(std, torch.ones_like(std), atol=1e-3)
    assert isinstance(model.encoder.final_norm, torch.nn.Identity)
    assert isinstance(model.decoder.final_norm, torch.nn.Identity)


def test_pre_ln_stack_ends_with_final_norm():
    model = _tiny(norm_position="pre", dropout=0.0).eval()
    assert isinstance(model.encoder.final_norm, torch.nn.LayerNorm)
    assert isinstance(model.decoder.final_norm, torch.nn.LayerNorm)
    src, tgt = _batch()
    x = model.src_embed(src)
    layer_out, _ = model.encoder.layers[0](x, padding_mask(src, 0))
    mean, std = _row_stats(layer_out)
    # A pre-LN layer leaves the residual stream unnormalised...
    assert not torch.allclose(std, torch.ones_like(std), atol=1e-2)
    # ...and the final norm normalises the stack's output.
    memory, src_mask = model.encode(src)
    mean, std = _row_stats(memory[src != 0])  # padding rows are zeros: nothing reads them
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-5)
    assert torch.allclose(std, torch.ones_like(std), atol=1e-3)
    hidden, _, _ = model.decode_hidden(tgt, memory, src_mask)
    mean, std = _row_stats(hidden)
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-5)
    assert torch.allclose(std, torch.ones_like(std), atol=1e-3)


@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_encoder_on_real_tokens_only_gives_the_padded_numbers(norm_position, unpadded_batches):
    """A padded source batch runs the encoder on its real tokens (Unpadded); logits and gradients equal
    the plain padded path's, and a batch without enough padding stays padded."""
    built = unpadded_batches
    model = _tiny(norm_position=norm_position, dropout=0.0)
    src, tgt = _batch()  # 5 of 21 source positions are padding
    results = []
    for unpad in (True, False):
        model.unpad = unpad
        model.zero_grad()
        logits = model(src, tgt).logits
        logits[tgt != 0].sum().backward()
        results.append((logits[tgt != 0].detach(), [p.grad.clone() for p in model.parameters()]))
    assert built == [(3, 7)]
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-5)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    model.unpad = True
    full = torch.randint(4, 23, (3, 7))
    model(full, tgt)
    assert built == [(3, 7)]  # no padding, no packing


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_tuned_products_give_the_blas_numbers_in_a_whole_model(monkeypatch):
    """Every layer product of the model (fused QKV, cross-attention slices of in_proj, FFN) through oneDNN,
    and the vocabulary projection with blocked gradients, give the same logits and gradients as torch's
    BLAS, in training and under inference_mode."""
    import tformer.nn.linear as linear_module

    monkeypatch.setattr(linear_module, "ONEDNN_MIN_ROWS", 4)
    monkeypatch.setattr(linear_module, "ONEDNN_MIN_SIDE", 4)
    monkeypatch.setattr(linear_module, "ONEDNN_MAX_SIDE", 32)  # d_ff 32: layers in oneDNN; 40 words: blocked
    monkeypatch.setattr(linear_module, "GRAD_BLOCK", 6)
    model = _tiny(dropout=0.0, tgt_vocab_size=40)
    src, tgt = _batch()
    results = []
    for choice in (True, False):
        monkeypatch.setattr(linear_module, "_tuned_choice", choice)
        model.zero_grad()
        logits = model(src, tgt).logits
        (logits[tgt != 0] ** 2).mean().backward()
        with torch.inference_mode():
            memory, _ = model.encode(src)
        results.append((logits.detach(), memory, [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-5, rtol=1e-5)
    for a, b in zip(results[0][2], results[1][2]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_an_unknown_preset_is_named_by_every_registry_function():
    from tformer.errors import TformerError

    for function in (describe, get_config, create_model):
        with pytest.raises(TformerError, match="unknown model preset 'gpt3'; choose from: .*gpt2"):
            function("gpt3")


def test_ids_of_a_wrong_shape_or_integer_type_are_named():
    """A 1-D pair was read as rows of one token ("5 source rows for 4 target rows"); a 3-D batch, uint8 or int16
    ids failed inside torch (an embedding takes int64 and int32 only; uint8 would index as a mask)."""
    from tformer.errors import TformerError

    model = _tiny().eval()
    src, tgt = _batch()
    cases = [
        (lambda: model(src[0], tgt[0]), r"source ids must be \(batch, length\), not of shape \(7,\)"),
        (lambda: model(src, tgt[None]), r"target ids must be \(batch, length\), not of shape \(1, 3, 6\)"),
        (lambda: model.encode(src[0]), r"source ids must be \(batch, length\)"),
        (lambda: model.decode(tgt[0], *model.encode(src)), r"target ids must be \(batch, length\)"),
        (lambda: model(src.to(torch.uint8), tgt), "source ids must be int64 .* got torch.uint8"),
        (lambda: model(src, tgt.to(torch.int16)), "target ids must be int64 .* got torch.int16"),
    ]
    for call, needle in cases:
        with pytest.raises(TformerError, match=needle):
            call()
    torch.testing.assert_close(model(src.int(), tgt.int()).logits, model(src, tgt).logits)  # int32 is fine
