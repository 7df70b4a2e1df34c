"""Learning-rate schedules over a budget: linear warmup, then constant, cosine or linear decay.

Progress is a fraction of the budget: of the steps, or of the seconds when a time budget is
set, so a time-limited run still ends its decay exactly when its time is up.
"""

from __future__ import annotations

import math


def learning_rate(progress: float, *, peak: float, minimum: float, warmup: float,
                  schedule: str) -> float:
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return peak * max(progress / warmup, 0.01)  # never exactly 0: the first step counts
    if schedule == "constant":
        return peak
    decay = (progress - warmup) / (1.0 - warmup) if warmup < 1.0 else 1.0
    if schedule == "linear":
        return peak - (peak - minimum) * decay
    return minimum + (peak - minimum) * 0.5 * (1.0 + math.cos(math.pi * decay))


def budget_fraction(step: int, elapsed: float, max_steps: int | None,
                    max_time: float | None) -> float:
    """How much of the budget is used: the larger of the step and time fractions."""
    by_steps = step / max_steps if max_steps else 0.0
    by_time = elapsed / max_time if max_time else 0.0
    return max(by_steps, by_time)
