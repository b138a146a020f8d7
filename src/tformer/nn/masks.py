"""Attention masks. One convention for the whole package: boolean, True = may attend.

Masks are shaped to broadcast against attention scores of shape (B, H, T, S):
a padding mask is (B, 1, 1, S), a causal mask is (T, S) and their combination (B, 1, T, S).
"""

from __future__ import annotations

import torch
from torch import Tensor

from tformer.errors import TformerError


def check_boolean(mask: Tensor | None, name: str = "mask") -> None:
    """A mask or a selector must be boolean: an integer or float tensor is an index list, an additive bias or
    0/1 values, and read as a boolean it would select or hide the wrong places without an error."""
    if mask is not None and mask.dtype != torch.bool:
        raise TformerError(f"{name} must be a boolean tensor (True = may attend, or selected), got {mask.dtype}: "
                           "0/1 values are mask.bool(), an additive 0/-inf mask is mask == 0")


def token_mask(attention_mask: Tensor | None) -> Tensor | None:
    """A (B, S) attention_mask of real tokens as a boolean: True/False, or the 1/0 integers (or floats) that
    transformers' tokenizers return."""
    if attention_mask is None or attention_mask.dtype == torch.bool:
        return attention_mask
    if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise TformerError(f"attention_mask holds values other than 0 and 1 ({attention_mask.dtype}); it marks the "
                           "real tokens: True or 1 there, False or 0 at padding")
    return attention_mask != 0


def padding_mask(ids: Tensor, pad_id: int) -> Tensor:
    """(B, S) token ids -> (B, 1, 1, S) mask that hides padding keys from every query."""
    return (ids != pad_id)[:, None, None, :]


def lengths_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(B,) lengths -> (B, 1, 1, S) mask that keeps the first `length` keys of each row."""
    positions = torch.arange(max_len, device=lengths.device)
    return (positions[None, :] < lengths[:, None])[:, None, None, :]


def causal_mask(t: int, s: int | None = None, device: torch.device | str | None = None) -> Tensor:
    """(T, S) mask where query i may attend to keys j <= i + (S - T).

    With S > T the queries are the last T positions of a longer sequence (decoding with a cache),
    so every query still sees all of the past and nothing of the future.
    """
    s = t if s is None else s
    return torch.ones(t, s, dtype=torch.bool, device=device).tril(diagonal=s - t)


def combine(*masks: Tensor | None) -> Tensor | None:
    """Logical AND of the masks that are given; None when none is."""
    out = None
    for m in masks:
        if m is not None:
            out = m if out is None else out & m
    return out


# Packing and re-padding cost a few gathers per layer; below this share of padding (length-bucketed batches
# often have about 3%) they cost more than the padded rows they save (measured in benchmarks/speed_finetune.py).
UNPAD_MIN_PADDING = 0.08


def unpad_if_worthwhile(mask: Tensor, min_padding: float = UNPAD_MIN_PADDING,
                        count_first: bool | None = None) -> Unpadded | None:
    """Unpadded(mask) when at least `min_padding` of the (B, T) batch is padding, else None (stay padded).

    count_first (default: on a CPU) counts the real tokens before finding them, cheaper for a batch that stays
    padded; on a GPU each answer read back waits for the device, so the real tokens are found first (one
    wait) and then counted."""
    most = (1.0 - min_padding) * mask.numel()
    if mask.device.type == "cpu" if count_first is None else count_first:
        return None if int(mask.sum()) > most else Unpadded(mask)
    unpadded = Unpadded(mask)
    return None if unpadded.tokens > most else unpadded


class Unpadded:
    """The real tokens of a padded (B, T) batch, packed into N rows without the padding.

    Everything in an encoder layer except the attention scores is position-wise (the Q/K/V and output
    projections, the FFN, LayerNorm, residuals), so it may run on the N real tokens alone; a batch of
    sentences of mixed length is often half padding. Attention re-pads its queries, keys and values to
    (B, T) for the score matrix and packs its output again (`tformer.nn.attention.MultiHeadAttention`).
    Padding positions come back as zeros.
    """

    def __init__(self, mask: Tensor):
        """mask (B, T) bool, True at real tokens."""
        self.batch, self.length = mask.shape
        self.index = mask.reshape(-1).nonzero().squeeze(1)  # (N,) flat positions b * T + t

    @property
    def tokens(self) -> int:
        return self.index.numel()

    def unpad(self, x: Tensor) -> Tensor:
        """(B, T, ...) -> (N, ...)."""
        return _GatherRows.apply(x.reshape(self.batch * self.length, *x.shape[2:]), self.index)

    def pad(self, x: Tensor) -> Tensor:
        """(N, ...) -> (B, T, ...), zeros at padding."""
        full = _ScatterRows.apply(x, self.index, self.batch * self.length)
        return full.view(self.batch, self.length, *x.shape[1:])


# Gathering and scattering rows at distinct positions are each other's gradient. torch's own backward for
# index_select accumulates (scatter-add, for indices that may repeat), which on CPU costs several times a
# plain copy; `index` here never repeats, so a copy is exact.


def _scatter_rows(rows: Tensor, index: Tensor, n: int) -> Tensor:
    """(N, ...) rows -> (n, ...) with rows[i] at index[i] and zeros elsewhere."""
    return rows.new_zeros(n, *rows.shape[1:]).index_copy_(0, index, rows)


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor) -> Tensor:
        ctx.save_for_backward(index)
        ctx.n = x.size(0)
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (index,) = ctx.saved_tensors
        return _scatter_rows(grad, index, ctx.n), None


class _ScatterRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows: Tensor, index: Tensor, n: int) -> Tensor:
        ctx.save_for_backward(index)
        return _scatter_rows(rows, index, n)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (index,) = ctx.saved_tensors
        return grad.index_select(0, index), None, None
