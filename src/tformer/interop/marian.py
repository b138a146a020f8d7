"""Hugging Face MarianMTModel: the reference implementation of the paper's encoder-decoder, for parity.

`make_marian(config)` builds a random-weight MarianMTModel of a tformer config's shape (no download) and
`copy_tformer_to_marian` gives it tformer's weights, so the two can be compared logit for logit
(tests/test_parity_marian.py) and timed on identical work (benchmarks/speed_translation.py).
Weight names of the HF format live here and nowhere else.
"""

from __future__ import annotations

import torch
from torch import nn

from tformer.generation.search import never_generated
from tformer.models.transformer import Transformer, TransformerConfig
from tformer.nn.positional import sinusoidal_table


def make_marian(c: TransformerConfig):
    """A random-weight MarianMTModel of tformer config c's shape (no download), whose generate suppresses the
    tokens tformer's searches never produce (<pad>, <s>)."""
    from transformers import MarianConfig, MarianMTModel

    if c.norm_position != "post" or c.positional != "sinusoidal":
        raise ValueError("MarianMTModel is post-LN with sinusoidal positions only")
    mc = MarianConfig(
        vocab_size=c.src_vocab_size, decoder_vocab_size=c.tgt_vocab_size, d_model=c.d_model,
        encoder_layers=c.n_encoder_layers, decoder_layers=c.n_decoder_layers,
        encoder_attention_heads=c.n_heads, decoder_attention_heads=c.n_heads,
        encoder_ffn_dim=c.d_ff, decoder_ffn_dim=c.d_ff, activation_function=c.activation,
        dropout=c.dropout, attention_dropout=c.attention_dropout, activation_dropout=0.0,
        max_position_embeddings=c.max_len, scale_embedding=True,
        share_encoder_decoder_embeddings=c.share_embeddings, tie_word_embeddings=c.tie_output,
        pad_token_id=c.pad_id, eos_token_id=c.eos_id, decoder_start_token_id=c.bos_id, forced_eos_token_id=None,
        encoder_layerdrop=0.0, decoder_layerdrop=0.0,
    )
    model = MarianMTModel(mc)
    # tformer's searches never produce <pad> or <s>; opus-mt checkpoints ban their pad token likewise.
    model.generation_config.suppress_tokens = never_generated(c)
    return model


@torch.no_grad()
def copy_tformer_to_marian(src: Transformer, dst) -> None:
    """Copy tformer weights into a MarianMTModel of the same shape.

    in_proj rows [q; k; v] -> q_proj, k_proj, v_proj; out_proj; ff.w1/w2 -> fc1/fc2; encoder layer norms
    attn_block.norm -> self_attn_layer_norm, ff_block.norm -> final_layer_norm; decoder layer norms
    self_block.norm, cross_block.norm, ff_block.norm -> self_attn_layer_norm, encoder_attn_layer_norm,
    final_layer_norm; embeddings; final_logits_bias zero. Marian's sinusoidal table puts all sines before all
    cosines, tformer interleaves them, so Marian's table is overwritten with tformer's.
    """
    c = src.config
    d = c.d_model

    def lin(a: nn.Linear, b: nn.Linear) -> None:
        b.weight.copy_(a.weight)
        b.bias.copy_(a.bias)

    def attn(a, b) -> None:
        for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
            getattr(b, name).weight.copy_(a.in_proj.weight[i * d : (i + 1) * d])
            getattr(b, name).bias.copy_(a.in_proj.bias[i * d : (i + 1) * d])
        lin(a.out_proj, b.out_proj)

    def norm(a: nn.LayerNorm, b: nn.LayerNorm) -> None:
        b.weight.copy_(a.weight)
        b.bias.copy_(a.bias)
        b.eps = a.eps

    m = dst.model
    m.encoder.embed_tokens.weight.copy_(src.src_embed.embedding.weight)
    m.decoder.embed_tokens.weight.copy_(src.tgt_embed.embedding.weight)
    if c.share_embeddings:
        m.shared.weight.copy_(src.src_embed.embedding.weight)
    dst.lm_head.weight.copy_(src.output.weight)
    dst.final_logits_bias.zero_()
    for positions in (m.encoder.embed_positions, m.decoder.embed_positions):
        positions.weight.copy_(sinusoidal_table(positions.weight.size(0), d))
    for a, b in zip(src.encoder.layers, m.encoder.layers):
        attn(a.self_attn, b.self_attn)
        norm(a.attn_block.norm, b.self_attn_layer_norm)
        lin(a.ff.w1, b.fc1)
        lin(a.ff.w2, b.fc2)
        norm(a.ff_block.norm, b.final_layer_norm)
    for a, b in zip(src.decoder.layers, m.decoder.layers):
        attn(a.self_attn, b.self_attn)
        norm(a.self_block.norm, b.self_attn_layer_norm)
        attn(a.cross_attn, b.encoder_attn)
        norm(a.cross_block.norm, b.encoder_attn_layer_norm)
        lin(a.ff.w1, b.fc1)
        lin(a.ff.w2, b.fc2)
        norm(a.ff_block.norm, b.final_layer_norm)
