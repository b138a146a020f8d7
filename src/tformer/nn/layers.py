"""Encoder and decoder layers and their stacks (Vaswani et al. 2017, section 3.1, figure 1).

Every sub-layer is wrapped in a residual connection with layer normalisation:
    post-LN (the paper):  x = LayerNorm(x + Dropout(Sublayer(x)))
    pre-LN  (option):     x = x + Dropout(Sublayer(LayerNorm(x)))   and one final LayerNorm on the stack
Pre-LN trains more stably without warmup (Xiong et al. 2020); GPT-2 and most later models use it.
"""

from __future__ import annotations

from typing import Callable, Literal

from torch import Tensor, nn

from tformer.nn.attention import MultiHeadAttention
from tformer.nn.cache import DecoderCache
from tformer.nn.dropout import Dropout
from tformer.nn.feedforward import PositionwiseFeedForward
from tformer.nn.masks import Unpadded

NormPosition = Literal["post", "pre"]


class Residual(nn.Module):
    """x -> LayerNorm(x + Dropout(f(x))) (post) or x + Dropout(f(LayerNorm(x))) (pre)."""

    def __init__(self, d_model: int, dropout: float, norm_position: NormPosition = "post", eps: float = 1e-5):
        super().__init__()
        if norm_position not in ("post", "pre"):
            raise ValueError(f"norm_position must be 'post' or 'pre', not {norm_position!r}")
        self.norm = nn.LayerNorm(d_model, eps=eps)
        self.dropout = Dropout(dropout)
        self.pre = norm_position == "pre"

    def forward(self, x: Tensor, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        if self.pre:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


class EncoderLayer(nn.Module):
    """Self-attention, then the position-wise feed-forward network, each in a residual block."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.1,
                 attention_dropout: float = 0.0, activation: str = "relu",
                 norm_position: NormPosition = "post", eps: float = 1e-5):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, n_heads, attention_dropout)
        self.ff = PositionwiseFeedForward(d_model, d_ff, activation)
        self.attn_block = Residual(d_model, dropout, norm_position, eps)
        self.ff_block = Residual(d_model, dropout, norm_position, eps)

    def forward(self, x: Tensor, mask: Tensor | None = None, need_weights: bool = False,
                unpadded: Unpadded | None = None):
        """x (B, T, D), or (N, D) real tokens when `unpadded` says where they sit in the padded batch."""
        weights = None

        def self_attention(h: Tensor) -> Tensor:
            nonlocal weights
            out, weights = self.self_attn(h, mask=mask, need_weights=need_weights, unpadded=unpadded)
            return out

        x = self.attn_block(x, self_attention)
        return self.ff_block(x, self.ff), weights


class DecoderLayer(nn.Module):
    """Masked self-attention, encoder-decoder attention (when `cross_attention`), feed-forward network.

    Decoder-only models (GPT) build it with cross_attention=False.
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.1,
                 attention_dropout: float = 0.0, activation: str = "relu",
                 norm_position: NormPosition = "post", cross_attention: bool = True, eps: float = 1e-5):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, n_heads, attention_dropout)
        self.self_block = Residual(d_model, dropout, norm_position, eps)
        self.cross_attn = MultiHeadAttention(d_model, n_heads, attention_dropout) if cross_attention else None
        self.cross_block = Residual(d_model, dropout, norm_position, eps) if cross_attention else None
        self.ff = PositionwiseFeedForward(d_model, d_ff, activation)
        self.ff_block = Residual(d_model, dropout, norm_position, eps)

    def forward(self, x: Tensor, memory: Tensor | None = None, self_mask: Tensor | None = None,
                memory_mask: Tensor | None = None, cache: DecoderCache | None = None, layer_index: int = 0,
                need_weights: bool = False, is_causal: bool = False):
        """Returns (x, self-attention weights, cross-attention weights); weights only when asked for.

        is_causal replaces self_mask when the whole sequence is given at once (no cache, no padding)."""
        self_w = cross_w = None

        def self_attention(h: Tensor) -> Tensor:
            nonlocal self_w
            c = cache.self_attn[layer_index] if cache is not None else None
            out, self_w = self.self_attn(h, mask=self_mask, cache=c, need_weights=need_weights, is_causal=is_causal)
            return out

        def cross_attention(h: Tensor) -> Tensor:
            nonlocal cross_w
            c = cache.cross_attn[layer_index] if cache is not None else None
            out, cross_w = self.cross_attn(h, context=memory, mask=memory_mask, cache=c, need_weights=need_weights)
            return out

        x = self.self_block(x, self_attention)
        if self.cross_attn is not None and memory is not None:
            x = self.cross_block(x, cross_attention)
        return self.ff_block(x, self.ff), self_w, cross_w


class Encoder(nn.Module):
    """N identical encoder layers (+ a final LayerNorm when pre-LN).

    share_layers: one layer's parameters applied N times (ALBERT's cross-layer sharing, Lan et al. 2020):
    the depth of N layers for the parameters of one.
    """

    def __init__(self, n_layers: int, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.1,
                 attention_dropout: float = 0.0, activation: str = "relu",
                 norm_position: NormPosition = "post", eps: float = 1e-5, share_layers: bool = False):
        super().__init__()
        self.n_layers = n_layers
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, n_heads, d_ff, dropout, attention_dropout, activation, norm_position, eps)
            for _ in range(1 if share_layers else n_layers)
        )
        self.final_norm = nn.LayerNorm(d_model, eps=eps) if norm_position == "pre" else nn.Identity()

    def stack(self) -> list[EncoderLayer]:
        """The layers in the order they are applied (the same module N times when shared)."""
        if len(self.layers) == self.n_layers:
            return list(self.layers)
        return [self.layers[0]] * self.n_layers

    def forward(self, x: Tensor, mask: Tensor | None = None, need_weights: bool = False,
                hidden_states: list[Tensor] | None = None, unpadded: Unpadded | None = None):
        """Returns (x, per-layer self-attention weights or an empty list).

        hidden_states: a list that receives the stack's input and every layer's output (N + 1 tensors),
        for feature extraction from any layer. unpadded: x holds only the real tokens (see Unpadded)."""
        all_weights = []
        if hidden_states is not None:
            hidden_states.append(x)
        for layer in self.stack():
            x, w = layer(x, mask, need_weights, unpadded)
            if need_weights:
                all_weights.append(w)
            if hidden_states is not None:
                hidden_states.append(x)
        return self.final_norm(x), all_weights


class Decoder(nn.Module):
    """N identical decoder layers (+ a final LayerNorm when pre-LN)."""

    def __init__(self, n_layers: int, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.1,
                 attention_dropout: float = 0.0, activation: str = "relu",
                 norm_position: NormPosition = "post", cross_attention: bool = True, eps: float = 1e-5):
        super().__init__()
        self.layers = nn.ModuleList(
            DecoderLayer(d_model, n_heads, d_ff, dropout, attention_dropout, activation, norm_position,
                         cross_attention, eps)
            for _ in range(n_layers)
        )
        self.final_norm = nn.LayerNorm(d_model, eps=eps) if norm_position == "pre" else nn.Identity()

    def forward(self, x: Tensor, memory: Tensor | None = None, self_mask: Tensor | None = None,
                memory_mask: Tensor | None = None, cache: DecoderCache | None = None, need_weights: bool = False,
                is_causal: bool = False):
        """Returns (x, per-layer self-attention weights, per-layer cross-attention weights)."""
        self_ws, cross_ws = [], []
        for i, layer in enumerate(self.layers):
            x, sw, cw = layer(x, memory, self_mask, memory_mask, cache, i, need_weights, is_causal)
            if need_weights:
                self_ws.append(sw)
                cross_ws.append(cw)
        return self.final_norm(x), self_ws, cross_ws
