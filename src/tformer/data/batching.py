"""Batches by token count with length bucketing, and padding into tensors.

Sorting examples by length before cutting batches puts sentences of similar length together, so little of
each batch is padding; a batch holds as many sentences as fit in `max_tokens` padded tokens. The order of
batches is shuffled every epoch from (seed, epoch), so a run is reproducible and can resume mid-epoch.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def token_batches(lengths: Sequence[int], max_tokens: int, max_sentences: int | None = None,
                  shuffle: bool = True, seed: int = 0, epoch: int = 0) -> list[list[int]]:
    """Indices of the examples in each batch; every batch's padded size (n * longest) <= max_tokens.

    lengths[i] is example i's length (for a translation pair, the longer side). An example longer than
    max_tokens alone still gets a batch of its own.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    n = len(lengths)
    lens = torch.as_tensor(lengths, dtype=torch.long)
    if shuffle:
        # Random order first, then a stable sort by length: equal lengths end up in a random order.
        order = torch.randperm(n, generator=g)
        order = order[torch.sort(lens[order], stable=True).indices]
    else:
        order = torch.sort(lens, stable=True).indices
    batches, current, longest = [], [], 0
    for i in order.tolist():
        l = lengths[i]
        new_longest = max(longest, l)
        too_many = max_sentences is not None and len(current) >= max_sentences
        if current and (new_longest * (len(current) + 1) > max_tokens or too_many):
            batches.append(current)
            current, new_longest = [], l
        current.append(i)
        longest = new_longest
    if current:
        batches.append(current)
    if shuffle:
        perm = torch.randperm(len(batches), generator=g).tolist()
        batches = [batches[j] for j in perm]
    return batches


def shard(batches: list[list[int]], rank: int, world_size: int) -> list[list[int]]:
    """This rank's share of the batches; every rank gets the same number of steps (the remainder is dropped)."""
    usable = len(batches) - len(batches) % world_size
    return batches[rank:usable:world_size]


def pad(sequences: Sequence[Sequence[int]], pad_id: int) -> Tensor:
    """List of id lists -> (B, L) long tensor padded on the right."""
    longest = max((len(s) for s in sequences), default=0)
    out = torch.full((len(sequences), max(longest, 1)), pad_id, dtype=torch.long)
    for row, s in enumerate(sequences):
        if len(s):
            out[row, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


def collate_translation(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int, bos_id: int,
                        eos_id: int) -> dict[str, Tensor]:
    """Teacher forcing: the decoder reads <s> + y and must predict y + </s>, one position ahead.

    Returns src (B, S), tgt_in (B, T) = <s> y_1 .. y_n, tgt_out (B, T) = y_1 .. y_n </s>.
    """
    src = pad([s for s, _ in pairs], pad_id)
    tgt_in = pad([[bos_id, *t] for _, t in pairs], pad_id)
    tgt_out = pad([[*t, eos_id] for _, t in pairs], pad_id)
    return {"src": src, "tgt_in": tgt_in, "tgt_out": tgt_out}
