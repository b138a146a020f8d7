"""Learning-rate schedules as pure functions of the step (1-based)."""

from __future__ import annotations

import math


def inverse_sqrt_lr(step: int, d_model: int, warmup: int, factor: float = 1.0) -> float:
    """Vaswani et al. 2017, eq. 3: lrate = d_model^-0.5 * min(step^-0.5, step * warmup^-1.5).

    Grows linearly for `warmup` steps, then decays with the inverse square root of the step.
    """
    step = max(step, 1)
    return factor * d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


def warmup_cosine_lr(step: int, peak: float, warmup: int, total: int, floor: float = 0.0) -> float:
    """Linear warmup to `peak`, then cosine decay to `floor` at `total` steps."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))
