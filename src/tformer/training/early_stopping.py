"""Early stopping: end training once the validation metric stops improving, keeping the best checkpoint."""

from __future__ import annotations

import math


class EarlyStopping:
    """Stop when the validation metric has not improved for `patience` evaluations in a row.

    An improvement is a value better than the best so far by more than min_delta (mode "max": higher is better,
    "min": lower). After update(), `is_best` says whether this value is the new best: the moment to save the
    checkpoint that is kept. NaN never improves."""

    def __init__(self, patience: int, mode: str = "max", min_delta: float = 0.0):
        if patience < 1:
            raise ValueError(f"patience must be at least 1, not {patience}")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
        if min_delta < 0:
            raise ValueError(f"min_delta must be non-negative, not {min_delta}")
        self.patience, self.mode, self.min_delta = patience, mode, min_delta
        self.best: float | None = None
        self.best_step: int | None = None
        self.is_best = False
        self.bad = 0  # evaluations since the best
        self.updates = 0
        self.should_stop = False

    def improves(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def update(self, value: float, step: int | None = None) -> bool:
        """Record one evaluation (step: the training step, default the count of updates so far); True: stop."""
        step = self.updates if step is None else step
        self.updates += 1
        self.is_best = self.improves(float(value))
        if self.is_best:
            self.best, self.best_step, self.bad = float(value), step, 0
        else:
            self.bad += 1
        self.should_stop = self.bad >= self.patience
        return self.should_stop
