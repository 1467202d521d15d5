"""An exponential moving average of the weights (`train.ema_decay`; 0 disables it).

After update n the shadow weights move toward the live ones:

    shadow = d * shadow + (1 - d) * weights,   d = min(ema_decay, (1 + n) / (10 + n))

The ramp in d (TensorFlow's ExponentialMovingAverage with num_updates) keeps the early average
from dragging the random initial weights along: at update 250 d is 0.965, at 3,600 0.9975, so the
average spans roughly the last tenth of the run until ema_decay caps it. The shadow is a second
Transformer, so validation and checkpoints use it like any model; it depends on the step alone,
and a resumed run restores it from last.pt, so resume stays exact.
"""

from __future__ import annotations

import copy

import torch

from mha.model.transformer import Transformer


class EMA:
    """Shadow weights of `model`, updated in place with one fused lerp over all parameters."""

    def __init__(self, model: Transformer, decay: float) -> None:
        self.decay, self.updates = decay, 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self._shadow = list(self.model.parameters())  # tied weights appear once in each list
        self._live = list(model.parameters())

    @classmethod
    def attach(cls, model: Transformer, optimizer: torch.optim.Optimizer,
               decay: float) -> EMA | None:
        """An average that updates after each optimizer step (a step a GradScaler skips does not
        count); None when decay is 0."""
        if decay <= 0:
            return None
        ema = cls(model, decay)
        optimizer.register_step_post_hook(lambda *_: ema.update())
        return ema

    def decay_at(self, update: int) -> float:
        return min(self.decay, (1 + update) / (10 + update))

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        torch._foreach_lerp_(self._shadow, self._live, 1 - self.decay_at(self.updates))

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "weights": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["weights"])
        self.updates = state["updates"]

