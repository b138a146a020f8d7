"""Language-modelling data: text files -> one long array of token ids -> random contiguous blocks.

A training example is a window of block_size + 1 consecutive tokens starting anywhere in the corpus: the
model reads the first block_size and predicts each next one (x = w[i : i+T], y = w[i+1 : i+T+1]). The
window starts of a batch are drawn from a generator seeded by (seed, epoch, batch), so a run is
reproducible and resumes exactly. Validation reads the held-out tokens in consecutive non-overlapping
blocks, so its loss covers every held-out token once and does not depend on a random draw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from tformer.data.parallel import read_text
from tformer.errors import TformerError


def split_paths(spec: str) -> list[str]:
    """'a.txt,b.txt.gz' -> ['a.txt', 'b.txt.gz'] (blank items dropped)."""
    return [p.strip() for p in spec.split(",") if p.strip()]


def read_corpus(paths: Sequence[str | Path]) -> list[str]:
    """The text of each file (plain or .gz, UTF-8), each checked: missing, empty or undecodable files are
    one-line errors naming the file (and line)."""
    if not paths:
        raise TformerError("language modelling needs data.train_text (one or more text files)")
    return [read_text(p) for p in paths]


def encode_corpus(texts: Sequence[str], tokenizer, names: Sequence[str] | None = None) -> np.ndarray:
    """Token ids of the texts, one after another, with the end-of-text token between documents when the
    tokenizer has one (GPT-2's convention)."""
    parts = []
    for i, text in enumerate(texts):
        if parts and tokenizer.eos_id is not None:
            parts.append(np.array([tokenizer.eos_id], dtype=np.int64))
        parts.append(tokenizer.encode_corpus(text, names[i] if names else "text"))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def split_train_valid(ids: np.ndarray, valid_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The first (1 - f) of the tokens for training, the last f for validation."""
    if not 0.0 <= valid_fraction < 1.0:
        raise TformerError(f"data.valid_fraction must be in [0, 1), not {valid_fraction}")
    cut = len(ids) - int(len(ids) * valid_fraction)
    return ids[:cut], ids[cut:]


class BlockSampler:
    """Random windows of block_size + 1 tokens from one array of ids."""

    def __init__(self, ids: np.ndarray, block_size: int, batch_size: int):
        if len(ids) < block_size + 1:
            raise TformerError(f"the training text has {len(ids)} tokens, fewer than data.block_size + 1 = "
                               f"{block_size + 1}: use more text or a smaller block")
        self.ids = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64))
        self.block_size, self.batch_size = block_size, batch_size

    def batches_per_epoch(self) -> int:
        """An epoch is as many batches as it takes to draw about as many tokens as the corpus holds."""
        return max(1, len(self.ids) // (self.block_size * self.batch_size))

    def epoch(self, epoch: int, seed: int) -> list[Tensor]:
        """The window starts (batch_size,) of each batch of this epoch."""
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        high = len(self.ids) - self.block_size  # a start s needs s + block_size < len(ids)
        starts = torch.randint(high, (self.batches_per_epoch(), self.batch_size), generator=g)
        return list(starts)

    def gather(self, starts: Tensor) -> tuple[Tensor, Tensor]:
        """Window starts (B,) -> inputs x (B, T) and next-token targets y (B, T)."""
        index = starts[:, None] + torch.arange(self.block_size + 1)  # (B, T+1)
        window = self.ids[index]
        return window[:, :-1], window[:, 1:]


def sequential_blocks(ids: np.ndarray, block_size: int) -> tuple[Tensor, Tensor]:
    """Every held-out token once: consecutive non-overlapping windows -> x (N, T), y (N, T)."""
    ids_t = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64))
    n = (len(ids_t) - 1) // block_size
    if n < 1:
        raise TformerError(f"the validation text has {len(ids_t)} tokens, fewer than data.block_size + 1 = "
                           f"{block_size + 1}")
    x = ids_t[: n * block_size].view(n, block_size)
    y = ids_t[1 : n * block_size + 1].view(n, block_size)
    return x, y
