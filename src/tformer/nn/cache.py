"""Key/value caches for incremental decoding.

Decoding step t needs the keys and values of every earlier position. Recomputing them costs O(t) work per
layer per step; a cache keeps them, so each step projects only its new token. Encoder-decoder attention
keys/values depend only on the encoder output, so they are projected once and reused at every step.
"""

from __future__ import annotations

import torch
from torch import Tensor


class AttentionCache:
    """Keys and values (B, H, S, Dh) of one attention module, grown in place along S."""

    def __init__(self, capacity: int = 0):
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.length = 0
        self.capacity = capacity  # positions to reserve on first use (0: grow as needed)

    @property
    def filled(self) -> bool:
        return self.k is not None

    def set(self, k: Tensor, v: Tensor) -> None:
        self.k, self.v, self.length = k, v, k.size(2)

    def get(self) -> tuple[Tensor, Tensor]:
        return self.k[:, :, : self.length], self.v[:, :, : self.length]

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add this step's (B, H, t, Dh) keys/values; return all of them so far."""
        if self.k is None:
            # Reserve room for later steps so appending is a copy into place, not a concatenation.
            b, h, t, dh = k.shape
            capacity = max(2 * t, 64, self.capacity)
            self.k = k.new_empty(b, h, capacity, dh)
            self.v = v.new_empty(b, h, capacity, dh)
        elif self.length + k.size(2) > self.k.size(2):
            grow = max(self.k.size(2), k.size(2))
            self.k = torch.cat([self.k, self.k.new_empty(*self.k.shape[:2], grow, self.k.size(3))], dim=2)
            self.v = torch.cat([self.v, self.v.new_empty(*self.v.shape[:2], grow, self.v.size(3))], dim=2)
        end = self.length + k.size(2)
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.get()

    def select(self, index: Tensor) -> None:
        """Keep the batch rows in `index` (beam search reorders and prunes hypotheses)."""
        if self.k is None:
            return
        n, filled = index.numel(), self.length
        k = self.k.new_empty(n, *self.k.shape[1:])
        v = self.v.new_empty(n, *self.v.shape[1:])
        # Copy only the filled positions, not the room reserved for later steps.
        torch.index_select(self.k[:, :, :filled], 0, index, out=k[:, :, :filled])
        torch.index_select(self.v[:, :, :filled], 0, index, out=v[:, :, :filled])
        self.k, self.v = k, v


class DecoderCache:
    """One self-attention and one cross-attention cache per decoder layer."""

    def __init__(self, n_layers: int, capacity: int = 0):
        """capacity: how many positions decoding will reach, when known, so the caches never grow."""
        self.self_attn = [AttentionCache(capacity) for _ in range(n_layers)]
        self.cross_attn = [AttentionCache() for _ in range(n_layers)]

    @property
    def length(self) -> int:
        """How many target positions are cached (the next token's position)."""
        return self.self_attn[0].length if self.self_attn else 0

    def select(self, index: Tensor, cross_index: Tensor | None = None) -> None:
        """Keep decoder rows `index` in the self-attention caches, and source rows `cross_index` in the
        encoder-side caches (None: leave them; beam search reorders hypotheses only among the K beams of
        one sentence, which all read the same encoder keys/values)."""
        for c in self.self_attn:
            c.select(index)
        if cross_index is not None:
            for c in self.cross_attn:
                c.select(cross_index)
