"""Learning-rate schedules: a factor of the peak rate, a function of the update number alone, so a
resumed or distributed run follows the same curve.

`inverse_sqrt` is the paper's: it never anneals within a time budget. `Linear` decays to zero at
a planned last update ("Budgeted Training", Li et al. 2020, found linear-to-zero best under a fixed
budget). With `train.max_time` the plan is made at the first validation after warmup, from the
measured seconds per update and per validation, and corrected once, at the first validation past
half the budget, from the rates over the whole run so far: a machine whose speed drifts would
otherwise stop on the clock before the rate reaches zero, or reach it minutes early. The plan is
stored in the checkpoint.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from mha.configs.schema import TrainConfig
from mha.training.distributed import Distributed
from mha.training.state import Progress

log = logging.getLogger(__name__)


def inverse_sqrt(step: int, warmup: int) -> float:
    """Linear warmup to 1 over `warmup` updates, then sqrt(warmup / step) (Vaswani et al.)."""
    step = max(step, 1)
    return step / warmup if step < warmup else math.sqrt(max(warmup, 1) / step)


@dataclass
class Plan:
    """Linear decay from `top` at update `start` to 0 at update `end`; end 0: not planned yet."""

    start: int = 0
    end: int = 0
    top: float = 1.0  # 1 for the first plan; the factor reached by then for the correction


def linear(step: int, warmup: int, plan: Plan) -> float:
    """Linear warmup to 1, 1 until the plan starts, then linearly from plan.top to 0 at plan.end."""
    if step < warmup:
        return max(step, 1) / warmup
    if not plan.end:
        return 1.0
    if step <= plan.start:
        return plan.top
    return plan.top * max(0.0, (plan.end - step) / (plan.end - plan.start))


def planned_updates(step: int, seconds_left: float, seconds_per_update: float,
                    seconds_per_validation: float, eval_every: int, max_steps: int) -> int:
    """The last update that fits in `seconds_left`, counting a validation every `eval_every`."""
    cost = seconds_per_update + seconds_per_validation / eval_every
    return min(max_steps, step + max(1, math.floor(max(seconds_left, 0.0) / cost)))


def lr_factor(step: int, settings: TrainConfig, progress: Progress) -> float:
    """The factor of train.lr after `step` updates, for the configured schedule."""
    if settings.schedule == "inverse_sqrt":
        return inverse_sqrt(step, settings.warmup_steps)
    plan = Plan(progress.plan_start, progress.plan_end, progress.plan_top)
    if not settings.max_time:  # no time budget: decay over the update budget
        plan = Plan(settings.warmup_steps, settings.max_steps)
    return linear(step, settings.warmup_steps, plan)


def plan_decay(settings: TrainConfig, progress: Progress, max_time: float,
               dist: Distributed) -> None:
    """At the first validation after warmup, turn the time left into the update at which the
    linear schedule reaches zero; at the first one past half the budget, plan again from the
    factor reached, so the rate stays continuous. Rank 0 decides; every rank takes its number."""
    if (settings.schedule != "linear" or math.isinf(max_time) or progress.plan_corrected
            or progress.step < settings.warmup_steps):
        return
    halfway = progress.elapsed >= max_time / 2
    if progress.plan_end and (not halfway or progress.step >= progress.plan_end):
        return
    validations = progress.step // settings.eval_every
    end = int(dist.broadcast(planned_updates(
        progress.step, max_time - progress.elapsed,
        (progress.elapsed - progress.validation_seconds) / progress.step,
        progress.validation_seconds / max(validations, 1), settings.eval_every, settings.max_steps
    ))[0])
    first = Plan(progress.plan_start, progress.plan_end, progress.plan_top)
    top = linear(progress.step, settings.warmup_steps, first)
    progress.plan_start, progress.plan_end, progress.plan_top = progress.step, end, top
    progress.plan_corrected = halfway
    log.info("linear schedule%s: %d updates fit in the time left; the learning rate reaches zero "
             "at update %d", ", corrected halfway" if first.end else "", end - progress.step, end)
