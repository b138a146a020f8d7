"""Parity with the reference implementation: transformers' MarianMTModel given tformer's weights."""

from __future__ import annotations

import pytest
import torch

from tformer.generation.search import beam_search, greedy_decode, never_generated, strip_after_eos
from tformer.models.transformer import Transformer, TransformerConfig

transformers = pytest.importorskip("transformers")
from tformer.interop.marian import copy_tformer_to_marian, make_marian  # noqa: E402

CONFIG = TransformerConfig(src_vocab_size=60, tgt_vocab_size=60, d_model=32, n_heads=4, d_ff=64, n_encoder_layers=2,
                           n_decoder_layers=2, dropout=0.0, share_embeddings=True, max_len=64)


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(3)
    ours = Transformer(CONFIG).eval()
    ref = make_marian(CONFIG).eval()
    copy_tformer_to_marian(ours, ref)
    return ours, ref


def _batch():
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, 60, (3, 9), generator=g)
    src[1, 6:] = CONFIG.pad_id  # padding in the source
    tgt = torch.randint(4, 60, (3, 7), generator=g)
    tgt[:, 0] = CONFIG.bos_id
    return src, tgt


def test_logits_match_marian(pair):
    ours, ref = pair
    src, tgt = _batch()
    with torch.no_grad():
        a = ours(src, tgt).logits
        b = ref(input_ids=src, attention_mask=(src != CONFIG.pad_id).long(), decoder_input_ids=tgt).logits
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_greedy_generation_matches_marian_generate(pair):
    ours, ref = pair
    src, _ = _batch()
    mine = greedy_decode(ours, src, max_len=12)
    with torch.no_grad():
        out = ref.generate(input_ids=src, attention_mask=(src != CONFIG.pad_id).long(), num_beams=1, do_sample=False,
                           max_new_tokens=12, min_new_tokens=0, bad_words_ids=None)
    # Drop the decoder start token, then everything from </s> on.
    theirs = [strip_after_eos(row, CONFIG.eos_id, CONFIG.pad_id) for row in out[:, 1:].tolist()]
    assert mine == theirs


def _eos_prone_pair(seed: int, eos_weight: float, vocab: int = 30):
    """A random model whose last decoder norm's bias points towards </s>'s output row, so hypotheses end at
    varied lengths well inside max_len (a plain random model almost never says </s>)."""
    config = TransformerConfig(src_vocab_size=vocab, tgt_vocab_size=vocab, d_model=32, n_heads=4, d_ff=64,
                               n_encoder_layers=2, n_decoder_layers=2, dropout=0.0, share_embeddings=True, max_len=64)
    torch.manual_seed(seed)
    ours = Transformer(config).eval()
    with torch.no_grad():
        ours.output.weight.mul_(3.0)
        u = torch.randn(config.d_model)
        ours.decoder.layers[-1].ff_block.norm.bias.copy_(0.5 * u)
        ours.output.weight[config.eos_id] = eos_weight * u
    ref = make_marian(config).eval()
    copy_tformer_to_marian(ours, ref)
    return ours, ref, config


@pytest.mark.parametrize("seed,eos_weight", [(4, 0.4), (1, 0.7)])
def test_beam_search_n_best_matches_marian_generate(seed, eos_weight):
    """Every one of the K hypotheses, and its length-normalised score, equals generate(num_beams=K,
    early_stopping=True): a hypothesis ending late can displace a worse one that ended earlier (before: the
    first K to end were kept, so the n-best list held a worse hypothesis in place of a better one)."""
    ours, ref, config = _eos_prone_pair(seed, eos_weight)
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, config.src_vocab_size, (4, 7), generator=g)
    src[1, 5:] = config.pad_id
    compared = 0
    for k, length_penalty in ((3, 0.6), (5, 1.0), (5, 2.0)):
        mine = beam_search(ours, src, beam_size=k, max_len=39, length_penalty=length_penalty, n_best=k)
        with torch.no_grad():
            out = ref.generate(input_ids=src, attention_mask=(src != config.pad_id).long(), num_beams=k,
                               do_sample=False, max_new_tokens=40, min_new_tokens=0, early_stopping=True,
                               length_penalty=length_penalty, num_return_sequences=k, output_scores=True,
                               return_dict_in_generate=True)
        seqs = out.sequences.view(src.size(0), k, -1).tolist()
        scores = out.sequences_scores.view(src.size(0), k).tolist()
        for row in range(src.size(0)):
            if any(config.eos_id not in s for s in seqs[row]):
                continue  # ran out of length: transformers keeps it without </s>, tformer makes it end
            compared += 1
            assert [h.tokens for h in mine[row]] == [strip_after_eos(s[1:], config.eos_id, config.pad_id)
                                                     for s in seqs[row]]
            assert [h.score for h in mine[row]] == pytest.approx(scores[row], abs=1e-4)
    assert compared >= 8


@pytest.mark.parametrize("special", ["pad_id", "bos_id"])
def test_decoding_never_produces_pad_or_bos_and_matches_marian_suppressing_them(special):
    """A model that ranks <pad> or <s> first (an untrained one can) still decodes real tokens: greedy and beam
    search skip both, keep the other tokens' log-probabilities, and equal MarianMTModel.generate with
    suppress_tokens=[pad, bos]. Before, greedy cut its output at a <pad> and both searches emitted <s>."""
    config = TransformerConfig(src_vocab_size=30, tgt_vocab_size=30, d_model=32, n_heads=4, d_ff=64,
                               n_encoder_layers=2, n_decoder_layers=2, dropout=0.0, share_embeddings=True, max_len=64)
    torch.manual_seed(1)
    ours = Transformer(config).eval()
    top, second = (config.pad_id, config.bos_id) if special == "pad_id" else (config.bos_id, config.pad_id)
    with torch.no_grad():
        # The last norm's bias points at both special tokens' output rows and, less, at </s>'s.
        ours.output.weight.mul_(3.0)
        u, v = torch.randn(config.d_model), torch.randn(config.d_model)
        ours.decoder.layers[-1].ff_block.norm.bias.copy_(0.5 * u + 0.5 * v)
        ours.output.weight[top] = u
        ours.output.weight[second] = 0.9 * u
        ours.output.weight[config.eos_id] = 0.6 * v
    ref = make_marian(config).eval()
    copy_tformer_to_marian(ours, ref)
    g = torch.Generator().manual_seed(1)
    src = torch.randint(4, config.src_vocab_size, (4, 7), generator=g)
    src[1, 5:] = config.pad_id
    assert never_generated(config) == [config.pad_id, config.bos_id]
    hf = dict(input_ids=src, attention_mask=(src != config.pad_id).long(), do_sample=False, min_new_tokens=0)
    with torch.no_grad():
        unmasked = ref.generate(num_beams=1, max_new_tokens=20, suppress_tokens=None, **hf)
    assert unmasked[:, 1].tolist() == [top] * 4  # the model's own first choice is the special token

    mine = greedy_decode(ours, src, max_len=20)
    with torch.no_grad():
        out = ref.generate(num_beams=1, max_new_tokens=20, suppress_tokens=never_generated(config), **hf)
    assert mine == [strip_after_eos(row, config.eos_id, config.pad_id) for row in out[:, 1:].tolist()]
    assert any(len(row) > 1 for row in mine)
    assert [h[0].tokens for h in beam_search(ours, src, beam_size=1, max_len=20)] == mine

    compared = 0
    for k in (3, 5):
        hyps = beam_search(ours, src, beam_size=k, max_len=19, n_best=k)
        assert all(t not in (config.pad_id, config.bos_id) for row in hyps for h in row for t in h.tokens)
        with torch.no_grad():
            out = ref.generate(num_beams=k, max_new_tokens=20, early_stopping=True, num_return_sequences=k,
                               output_scores=True, return_dict_in_generate=True,
                               suppress_tokens=never_generated(config), **hf)
        seqs = out.sequences.view(src.size(0), k, -1).tolist()
        scores = out.sequences_scores.view(src.size(0), k).tolist()
        for row in range(src.size(0)):
            if any(config.eos_id not in s for s in seqs[row]):
                continue  # ran out of length (see the n-best test)
            compared += 1
            assert [h.tokens for h in hyps[row]] == [strip_after_eos(s[1:], config.eos_id, config.pad_id)
                                                     for s in seqs[row]]
            assert [h.score for h in hyps[row]] == pytest.approx(scores[row], abs=1e-4)
    assert compared >= 6
