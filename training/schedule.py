"""Learning-rate schedules: a factor of the peak rate, a function of the update number alone
(so a resumed or distributed run follows the same curve)."""

from __future__ import annotations

import math


def inverse_sqrt(step: int, warmup: int) -> float:
    """Linear warmup to 1 over `warmup` updates, then sqrt(warmup / step) (Vaswani et al.)."""
    step = max(step, 1)
    return step / warmup if step < warmup else math.sqrt(max(warmup, 1) / step)
