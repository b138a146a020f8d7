"""Position information added to token embeddings (Vaswani et al. 2017, section 3.5).

Sinusoidal: PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d_model)).
Learned: one trained vector per position (the paper reports nearly identical results; BERT and GPT use it).
Both return a (T, D) table for positions offset .. offset+T-1, which the embedding adds to its tokens.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_table(max_len: int, d_model: int) -> Tensor:
    """(max_len, d_model) sinusoidal encodings; even columns sin, odd columns cos."""
    pos = torch.arange(max_len, dtype=torch.float64).unsqueeze(1)  # (P, 1)
    inv_freq = torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    table = torch.zeros(max_len, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq[: d_model // 2])
    return table.float()


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed encodings; the table grows on demand, so there is no hard length limit."""

    def __init__(self, d_model: int, max_len: int = 1024):
        super().__init__()
        self.d_model = d_model
        self.register_buffer("table", sinusoidal_table(max_len, d_model), persistent=False)

    def forward(self, length: int, offset: int = 0) -> Tensor:
        end = offset + length
        if end > self.table.size(0):
            self.table = sinusoidal_table(max(end, 2 * self.table.size(0)), self.d_model).to(self.table)
        return self.table[offset:end]


class LearnedPositionalEmbedding(nn.Module):
    """A trained vector per position, up to max_len positions."""

    def __init__(self, d_model: int, max_len: int = 1024):
        super().__init__()
        self.max_len = max_len
        self.weight = nn.Parameter(torch.empty(max_len, d_model))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, length: int, offset: int = 0) -> Tensor:
        end = offset + length
        if end > self.max_len:
            raise ValueError(f"position {end - 1} is beyond the learned positions (max_len={self.max_len})")
        return self.weight[offset:end]


def make_positional(kind: str, d_model: int, max_len: int) -> nn.Module:
    if kind == "sinusoidal":
        return SinusoidalPositionalEncoding(d_model, max_len)
    if kind == "learned":
        return LearnedPositionalEmbedding(d_model, max_len)
    raise ValueError(f"unknown positional encoding {kind!r} (expected 'sinusoidal' or 'learned')")
