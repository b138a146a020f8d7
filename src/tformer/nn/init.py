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
