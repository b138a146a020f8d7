"""Parity with the reference implementation: transformers' MarianMTModel given tformer's weights."""

from __future__ import annotations

import pytest
import torch

from tformer.generation.search import greedy_decode, strip_after_eos
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
