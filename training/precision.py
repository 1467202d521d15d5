"""Number formats for training: fp32, or bf16 / fp16 autocast where the hardware runs them.

`train.precision: auto` takes bf16 only where the hardware computes in it natively (CUDA with
bf16; a CPU whose flags include avx512_bf16 or amx_bf16) and where a few real training steps,
timed each way at the start, are faster in it; fp32 elsewhere. A matmul probe would mislead: at
d_model 128 most of a step is elementwise work. The choice is kept in the run's progress, so a
resumed run (on this machine or another) trains on in the same format.
"""

from __future__ import annotations

import copy
import logging
import statistics
import time

import torch
from torch import nn

from mha.configs.schema import ConfigError, TrainConfig
from mha.data.batching import Batch, TokenBatches, collate
from mha.inference.provenance import cpu_info
from mha.training.distributed import Distributed
from mha.training.loss import summed_loss
from mha.training.state import Progress

log = logging.getLogger(__name__)

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs that compute in bf16
PROBE_BATCHES = 4  # the first batch warms up, the others are timed: 3 steps each way


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty where there is none."""
    return cpu_info()[1]


def native_bf16(device: torch.device) -> bool:
    """True where bf16 arithmetic runs in hardware, not emulated. torch's CPU capability string
    says "AVX512" for CPUs without AVX512-BF16 too, so the CPU's own flags decide."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and bool(cpu_flags() & set(BF16_CPU_FLAGS))


def _lacking(device: torch.device) -> str:
    if device.type == "cuda":
        return "a GPU older than Ampere"
    return f"no {' or '.join(BF16_CPU_FLAGS)} among the CPU flags"


def check_precision(precision: str, device: torch.device) -> None:
    """ConfigError for fp16 off CUDA; a warning for bf16 where the hardware emulates it."""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision fp16 needs CUDA; use bf16 or fp32 on the CPU")
    if precision == "bf16" and not native_bf16(device):
        log.warning("train.precision bf16 on %s without native bf16 (%s): bf16 is emulated and "
                    "far slower than fp32 here; bench/train_speed.py measures both", device,
                    _lacking(device))


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """The autocast context for `precision` (disabled for fp32)."""
    half = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=half, enabled=precision != "fp32")


def decide_precision(settings: TrainConfig, progress: Progress, model: nn.Module, train_set,
                     batches: TokenBatches, device: torch.device,
                     dist: Distributed) -> torch.autocast:
    """Decide the run's precision once (kept in `progress.precision`); return its autocast.

    `auto` is decided on the first start (rank 0 times, every rank follows) and kept on resume;
    fp32, bf16 and fp16 are taken as they are.
    """
    if not progress.precision:
        progress.precision = settings.precision
        if settings.precision == "auto":
            samples = probe_batches(train_set, batches, progress.epoch) if dist.is_main else []
            progress.precision = faster_precision(model, samples, settings.label_smoothing,
                                                  device, dist)
    elif settings.precision == "auto":  # resumed, perhaps on another machine
        log.info("train.precision auto: %s, as chosen when the run started", progress.precision)
        check_precision(progress.precision, device)
    return autocast(progress.precision, device)


def probe_batches(train_set, batches: TokenBatches, epoch: int) -> list[Batch]:
    """The first PROBE_BATCHES batches of the epoch (round again if it has fewer): real data,
    real shapes, the stored segmentation."""
    order = batches.epoch(epoch)
    rows = [train_set[order[i % len(order)]] for i in range(PROBE_BATCHES)]
    return [collate(r["src_ids"], r["tgt_ids"]) for r in rows]


def faster_precision(model: nn.Module, samples: list[Batch], label_smoothing: float,
                     device: torch.device, dist: Distributed) -> str:
    """bf16 where it is native and its steps are faster than fp32's, else fp32; rank 0 decides."""
    choice = "fp32"
    if dist.is_main and not native_bf16(device):
        log.info("train.precision auto: fp32 (%s has no native bf16: %s)", device,
                 _lacking(device))
    elif dist.is_main:
        seconds = step_seconds(model, samples, label_smoothing, device)
        choice = "bf16" if seconds["bf16"] < seconds["fp32"] else "fp32"
        flags = ", ".join(sorted(cpu_flags() & set(BF16_CPU_FLAGS))) or device.type
        log.info("train.precision auto: %s (forward + backward, median of %d real batches: bf16 "
                 "%.3f s, fp32 %.3f s; native bf16: %s)", choice, len(samples) - 1,
                 seconds["bf16"], seconds["fp32"], flags)
    return "bf16" if dist.broadcast(float(choice == "bf16"))[0] else "fp32"


def step_seconds(model: nn.Module, samples: list[Batch], label_smoothing: float,
                 device: torch.device) -> dict[str, float]:
    """Median seconds of a forward and backward pass in fp32 and in bf16, taking turns batch by
    batch (the first batch warms both up, untimed).

    The steps run on a copy of the model, and the random state (dropout draws) is restored
    afterwards: the run's weights and random stream are those of a run without the probe.
    """
    probe = copy.deepcopy(model).train()
    times = {"fp32": [], "bf16": []}
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        for i, batch in enumerate(samples):
            for precision in (("fp32", "bf16") if i % 2 else ("bf16", "fp32")):
                seconds = _timed_step(probe, batch, precision, label_smoothing, device)
                if i:
                    times[precision].append(seconds)
    return {precision: statistics.median(t) for precision, t in times.items()}


def _timed_step(model: nn.Module, batch: Batch, precision: str, label_smoothing: float,
                device: torch.device) -> float:
    src_ids, tgt_in, tgt_out = (x.to(device) for x in (batch.src_ids, batch.tgt_in, batch.tgt_out))
    _sync(device)
    start = time.perf_counter()
    with autocast(precision, device):
        loss = summed_loss(model, src_ids, tgt_in, tgt_out, label_smoothing)
    loss.backward()
    _sync(device)
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
