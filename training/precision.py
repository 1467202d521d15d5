"""Number formats for training: fp32, or bf16 / fp16 autocast where the hardware runs them."""

from __future__ import annotations

import logging

import torch

from mha.configs.schema import ConfigError

log = logging.getLogger(__name__)


def check_precision(precision: str, device: torch.device) -> None:
    """ConfigError for fp16 off CUDA; a warning for bf16 on a CPU that emulates it."""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision fp16 needs CUDA; use bf16 or fp32 on the CPU")
    capability = torch.backends.cpu.get_cpu_capability()
    if precision == "bf16" and device.type == "cpu" and "AVX512" not in capability:
        log.warning("train.precision bf16 on a CPU without AVX-512 (%s): bf16 matmuls are emulated "
                    "and far slower than fp32 here; bench/train_speed.py measures both", capability)


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """The autocast context for `precision` (disabled for fp32)."""
    half = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=half, enabled=precision != "fp32")
