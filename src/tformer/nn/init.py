"""Named weight-initialisation schemes, one function per scheme."""

from __future__ import annotations

from torch import nn


def init_transformer_(model: nn.Module, d_model: int, pad_id: int | None = None) -> None:
    """The original Transformer as fairseq and the annotated transformer train it.

    Xavier-uniform for every weight matrix (Glorot & Bengio 2010), zero biases, and token embeddings drawn
    from N(0, d_model^-0.5): multiplied by sqrt(d_model) in the forward pass they have unit variance, the
    scale of the positional encodings they are added to. The padding row is zero.
    """
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=d_model**-0.5)
            if pad_id is not None:
                nn.init.zeros_(module.weight[pad_id])


def init_gpt_(model: nn.Module, n_layers: int, std: float = 0.02) -> None:
    """GPT-2's scheme (Radford et al. 2019, section 2.3): N(0, 0.02) for weights and embeddings, zero biases,
    unit LayerNorms, and the projections that write into the residual stream (attention W^O, the FFN's
    second matrix) scaled down by 1/sqrt(2N), since N layers each add two of them to the same sum."""
    _normal_weights_zero_biases_(model, std)
    for name, p in model.named_parameters():
        if name.endswith("out_proj.weight") or name.endswith("ff.w2.weight"):
            nn.init.normal_(p, mean=0.0, std=std / (2 * n_layers) ** 0.5)


def init_bert_(model: nn.Module, std: float = 0.02, pad_id: int | None = None) -> None:
    """BERT's scheme (Devlin et al. 2019, as its reference code): truncated-normal-like N(0, 0.02) weights
    and embeddings, zero biases, unit LayerNorms, a zero padding embedding."""
    _normal_weights_zero_biases_(model, std)
    for name, p in model.named_parameters():
        if name.endswith("pos_embed.weight"):
            nn.init.normal_(p, mean=0.0, std=std)
    embed = getattr(getattr(model, "embeddings", None), "tok_embed", None)
    if pad_id is not None and isinstance(embed, nn.Embedding) and pad_id < embed.num_embeddings:
        nn.init.zeros_(embed.weight[pad_id])


def _normal_weights_zero_biases_(model: nn.Module, std: float) -> None:
    """What GPT-2 and BERT share: N(0, std) for every Linear and Embedding weight, zero biases, unit LayerNorms."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
