"""The optimiser of an update: Adam with a learning-rate schedule, fp16 loss scaling, gradients
averaged over target tokens, their norm measured (and clipped) every update."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from mha.configs.schema import TrainConfig


class Optimizer:
    """Adam (0.9, 0.98, 1e-9), its LambdaLR schedule and a GradScaler (enabled for fp16 only).

    An update is `backward` per micro-batch, `scale_and_clip_gradients` (which returns the
    gradient norm, for the caller to check before anything changes the weights), then `step`.
    """

    def __init__(self, model: nn.Module, settings: TrainConfig, device: torch.device,
                 factor: Callable[[int], float]) -> None:
        """`factor(step)`: the learning rate after `step` updates, as a factor of train.lr."""
        self.parameters, self.clip_norm = list(model.parameters()), settings.clip_norm
        self.adam = torch.optim.Adam(self.parameters, lr=settings.lr, betas=(0.9, 0.98), eps=1e-9,
                                     weight_decay=settings.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.adam, factor)
        self.scaler = torch.amp.GradScaler(device.type, enabled=settings.precision == "fp16")

    def backward(self, loss: Tensor) -> None:
        self.scaler.scale(loss).backward()

    def scale_and_clip_gradients(self, scale: Tensor | float) -> float:
        """Multiply the gradients by `scale` (summed loss -> mean), clip them to `clip_norm` when
        set, and return their total norm before clipping, as torch's clip_grad_norm_ does. It may
        be inf or NaN under fp16, where `step` then skips the update and lowers the loss scale."""
        self.scaler.unscale_(self.adam)
        grads = [p.grad for p in self.parameters if p.grad is not None]
        for grad in grads:
            grad.mul_(scale)
        norm = torch.nn.utils.get_total_norm(grads)
        if self.clip_norm:
            torch.nn.utils.clip_grads_with_norm_(self.parameters, self.clip_norm, norm)
        return norm.item()

    @property
    def skips_non_finite(self) -> bool:
        """fp16: a non-finite gradient is expected now and then, and the scaler skips it."""
        return self.scaler.is_enabled()

    def step(self) -> None:
        self.scaler.step(self.adam)
        self.scaler.update()
        self.scheduler.step()
        self.adam.zero_grad(set_to_none=True)

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def state_dict(self) -> dict:
        """The three entries of a checkpoint: optimizer, scheduler, scaler."""
        return {"optimizer": self.adam.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.adam.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
