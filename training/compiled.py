"""The compiled training step: torch.compile (inductor) of the forward and the loss, the backward
through AOTAutograd; a speed device that training switches on with `train.compile`.

The compiled graph computes what `summed_loss` computes, as one graph: the elementwise work
between the matmuls (LayerNorm, residuals, dropout, the loss) becomes fused C++ loops instead of
one dispatched op each. It keeps the readable model: the graph wraps the same module, so the
weights, the checkpoints (no `_orig_mod.` keys) and the optimiser are untouched.

- Shapes: one graph for every batch (`dynamic=True`); batch size and lengths are symbols, so the
  length-bucketed batches never recompile.
- Dropout: model/dropout.py's own masks, drawn by the same generator calls as eager
  (`fallback_random`: inductor keeps torch's random ops instead of its own), so a compiled run
  draws the masks an eager run draws and a checkpoint's RNG state resumes it exactly.
- bf16 autocast, entered by the loop around the call, is traced into the graph.
- Padding positions leave before the output layer, as in RealTokenLogits; their indices are
  found outside the graph (a data-dependent size) and passed in.

`train.compile: auto` stays eager, as measured (see `compile_decision`). tests/test_compiled.py
proves the compiled losses and gradients equal the eager step's.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mha.configs.schema import ConfigError, TrainConfig
from mha.data.tokenizer import Tokenizer
from mha.model.masks import padding_mask
from mha.model.transformer import Transformer
from mha.training.loss import summed_loss

log = logging.getLogger(__name__)

class TokenLoss(nn.Module):
    """The summed label-smoothed cross-entropy of a batch, as summed_loss gives it."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, src_ids: Tensor, tgt_in: Tensor, positions: Tensor, targets: Tensor,
                smoothing: float) -> Tensor:
        """src_ids (B, S), tgt_in (B, T); positions (N,) the real target positions of the
        flattened (B * T) batch, targets (N,) their tokens -> the summed loss, a scalar."""
        src_pad_mask = padding_mask(src_ids, self.model.pad_id)
        memory = self.model.encode(src_ids, src_pad_mask)  # (B, S, D)
        hidden = self.model.decode(tgt_in, memory, src_pad_mask)  # (B, T, D)
        hidden = hidden.flatten(0, 1).index_select(0, positions)  # (N, D)
        logits = self.model.logits(hidden).float()  # (N, V); fused with the loss, never stored
        return F.cross_entropy(logits, targets, reduction="sum", label_smoothing=smoothing)


class CompiledLoss:
    """`summed_loss(model, src_ids, tgt_in, tgt_out, label_smoothing)`, compiled."""

    def __init__(self, model: Transformer, label_smoothing: float,
                 pad_id: int = Tokenizer.PAD) -> None:
        self.smoothing, self.pad_id = label_smoothing, pad_id
        self.graph = torch.compile(TokenLoss(model), dynamic=True,
                                   options={"fallback_random": True})
        self.compile_seconds: float | None = None  # the first call's, once made

    def __call__(self, src_ids: Tensor, tgt_in: Tensor, tgt_out: Tensor) -> Tensor:
        """src_ids (B, S), tgt_in (B, T), tgt_out (B, T) -> the summed loss, a scalar."""
        real = tgt_out.ne(self.pad_id)  # (B, T)
        positions = real.flatten().nonzero().squeeze(1)  # (N,)
        if self.compile_seconds is not None:
            return self.graph(src_ids, tgt_in, positions, tgt_out[real], self.smoothing)
        start = time.perf_counter()
        loss = self.graph(src_ids, tgt_in, positions, tgt_out[real], self.smoothing)
        self.compile_seconds = time.perf_counter() - start
        log.info("train.compile: the training step compiled in %.0f s (forward; the backward "
                 "compiles in the first backward pass)", self.compile_seconds)
        return loss


def training_loss(net: nn.Module, model: Transformer, settings: TrainConfig,
                  compiled: bool) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """The loss of (src_ids, tgt_in, tgt_out) that the loop calls: CompiledLoss of `model`, or
    summed_loss through `net` (RealTokenLogits, DDP-wrapped under torchrun)."""
    if compiled:
        return CompiledLoss(model, settings.label_smoothing)
    return functools.partial(summed_loss, net, label_smoothing=settings.label_smoothing)


def compile_decision(settings: TrainConfig, world_size: int) -> tuple[bool, str]:
    """Whether to compile the training step, and why.

    true compiles (ConfigError under torchrun); false does not; auto does not, as measured side
    by side (bench/train_speed.py, quiet 2-core Zen 5 with AVX512-BF16, 2 threads): the compiled
    update was 0.78x as fast as eager in bf16 at both sizes, 1.08x (preset) and 0.98x (reference)
    in fp32. On a loaded machine it was faster in bf16 (1.31x, 1.15x): eager's many small ops
    suffer more from others' load.
    """
    choice = settings.compile
    if choice == "true" and world_size > 1:
        raise ConfigError("train.compile true is not supported under torchrun (several "
                          "processes, DistributedDataParallel): the compiled step is "
                          "tested single-process only; set train.compile=false or auto")
    if choice == "auto":
        return False, ("auto: off (on a quiet 2-core Zen 5 the compiled update measured slower "
                       "than eager in bf16, 0.78x, and level in fp32, 0.98-1.08x)")
    return choice == "true", choice
