"""Learning-rate schedules as pure functions of the step (1-based)."""

from __future__ import annotations

import math


def inverse_sqrt_lr(step: int, d_model: int, warmup: int, factor: float = 1.0) -> float:
    """Vaswani et al. 2017, eq. 3: lrate = d_model^-0.5 * min(step^-0.5, step * warmup^-1.5).

    Grows linearly for `warmup` steps, then decays with the inverse square root of the step; warmup 0: no
    warmup, the decay from the first step (the formula's limit).
    """
    step = max(step, 1)
    if warmup <= 0:
        return factor * d_model**-0.5 * step**-0.5
    return factor * d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


def warmup_cosine_lr(step: int, peak: float, warmup: int, total: int, floor: float = 0.0) -> float:
    """Linear warmup to `peak` (reached at step `warmup`), then cosine decay to `floor` at step `total`."""
    if step < warmup:
        return peak * max(step, 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


def slanted_triangular_lr(step: int, total_steps: int, peak_lr: float, cut_frac: float = 0.1,
                          ratio: float = 32.0) -> float:
    """ULMFiT's slanted triangular learning rate (Howard & Ruder 2018, eq. 3):
        cut = floor(T * cut_frac)
        p   = t / cut                                       if t < cut
              1 - (t - cut) / (cut * (1 / cut_frac - 1))    otherwise
        lr  = peak_lr * (1 + p * (ratio - 1)) / ratio
    A short linear rise to peak_lr over the first cut_frac of the T steps, then a long linear decay; the rate
    starts and ends at peak_lr / ratio. The paper: cut_frac 0.1, ratio 32, peak 0.01.
    Departures, for edge cases only: cut is at least 1 (tiny T), and p stays in [0, 1] (steps past T)."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be positive, not {total_steps}")
    if not 0.0 < cut_frac < 1.0:
        raise ValueError(f"cut_frac must be in (0, 1), not {cut_frac}")
    if ratio < 1.0:
        raise ValueError(f"ratio must be at least 1, not {ratio}")
    cut = max(1, math.floor(total_steps * cut_frac))
    if step < cut:
        p = step / cut
    else:
        p = 1.0 - (step - cut) / (cut * (1.0 / cut_frac - 1.0))
    p = min(1.0, max(0.0, p))
    return peak_lr * (1.0 + p * (ratio - 1.0)) / ratio
