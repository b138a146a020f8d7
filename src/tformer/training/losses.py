"""Losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def label_smoothed_cross_entropy(logits: Tensor, target: Tensor, epsilon: float = 0.1,
                                 ignore_index: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Cross-entropy against a smoothed target (Szegedy et al. 2016; Vaswani et al. 2017, section 5.4).

    The target puts 1 - epsilon on the true token and spreads epsilon uniformly over the vocabulary:
        loss = (1 - epsilon) * (-log p_y) + epsilon * mean_k(-log p_k)
    Positions whose target is ignore_index (padding) contribute nothing.
    logits (N, V), target (N,) -> (summed loss, summed NLL of the true tokens, number of counted tokens);
    the NLL is what perplexity is made of.
    """
    logits = logits.reshape(-1, logits.size(-1))
    target = target.reshape(-1)
    if ignore_index is not None:
        keep = target != ignore_index
        if not bool(keep.all()):
            logits, target = logits[keep], target[keep]
    lprobs = torch.log_softmax(logits.float(), dim=-1)
    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    smooth = -lprobs.mean(dim=-1)
    loss = (1.0 - epsilon) * nll + epsilon * smooth
    return loss.sum(), nll.sum().detach(), torch.tensor(target.numel(), device=target.device)


def cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = -100) -> Tensor:
    """Mean token cross-entropy (no smoothing), for validation perplexity."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), target.reshape(-1), ignore_index=ignore_index)
