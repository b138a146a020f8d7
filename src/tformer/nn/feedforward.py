"""Position-wise feed-forward network (Vaswani et al. 2017, eq. 2): FFN(x) = max(0, x W1 + b1) W2 + b2."""

from __future__ import annotations

from torch import Tensor, nn

from tformer.nn.activations import ACTIVATIONS
from tformer.nn.dropout import Dropout
from tformer.nn.linear import Linear


class PositionwiseFeedForward(nn.Module):
    """Two linear maps with an activation between, applied to every position alike: D -> d_ff -> D."""

    def __init__(self, d_model: int, d_ff: int, activation: str = "relu", activation_dropout: float = 0.0):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r} (expected one of {sorted(ACTIVATIONS)})")
        self.w1 = Linear(d_model, d_ff)
        self.w2 = Linear(d_ff, d_model)
        self.activation = ACTIVATIONS[activation]
        self.activation_dropout = Dropout(activation_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(self.activation_dropout(self.activation(self.w1(x))))
