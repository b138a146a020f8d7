"""Optimiser construction. Parameter groups are a pure function of the model."""

from __future__ import annotations

import torch
from torch import nn


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: not on biases, norms or embeddings (1-D tensors and embedding tables)."""
    from tformer.nn.positional import LearnedPositionalEmbedding

    decay, no_decay, seen = [], [], set()
    tables = (nn.Embedding, LearnedPositionalEmbedding)  # token and position tables are looked up, not multiplied
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, tables)}
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and id(p) not in embeddings else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def make_adam(model: nn.Module, betas=(0.9, 0.98), eps: float = 1e-9, weight_decay: float = 0.0,
              groups: list[dict] | None = None) -> torch.optim.Optimizer:
    """Adam as in the paper (beta1 0.9, beta2 0.98, eps 1e-9); AdamW's decoupled decay when weight_decay > 0.

    groups: parameter groups to use instead of parameter_groups(model) (each may carry an lr_scale)."""
    groups = groups if groups is not None else parameter_groups(model, weight_decay)
    # lr is set by the schedule before every step. The fused kernel updates all tensors in one pass
    # (CPU and CUDA); it computes the same update as the loop over parameters.
    devices = {p.device.type for g in groups for p in g["params"]}
    fused = devices <= {"cpu", "cuda"}
    if weight_decay > 0 or any(g.get("weight_decay", 0) > 0 for g in groups):
        return torch.optim.AdamW(groups, lr=0.0, betas=betas, eps=eps, fused=fused)
    return torch.optim.Adam(groups, lr=0.0, betas=betas, eps=eps, fused=fused)
