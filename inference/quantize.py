"""int8 matmuls for decoding on the CPU (`mha translate/eval --quantization int8`), by torchao.

`quantize_int8(model)` stores every matmul weight of a loaded model as int8, one scale per output
row (symmetric), and quantizes each matmul's input to int8 as it runs, one scale per token: each
nn.Linear (W_Q, W_K, W_V, W_O, the feed-forward's W_1 and W_2, the output projection over the
vocabulary) and the stacked projections of mha.model.fused, which load_model makes for decoding.
Embeddings, biases, LayerNorms, softmax and the KV cache stay float; with tied embeddings the
output projection gets an int8 copy and the embedding table keeps its float weights.

Route: torchao's dynamic int8 (`Int8DynamicActivationInt8WeightConfig`), chosen over its int8
weight-only (`Int8WeightOnlyConfig`, int8 weights dequantized inside a float matmul) by
bench/int8_routes.py (en-de preset, one thread; table in bench/results_int8.md). Only dynamic int8
is faster than float32 anywhere: under torch.compile at batch 64, 1.2-1.75x a cached decoder
step in four runs, as CTranslate2 int8 is (int8 x int8 matmuls). Weight-only is at best level
with it: the weights (6.5 MiB) sit in the CPU's caches, so reading a quarter of the bytes saves
nothing. Eager, both are slower than float32, dynamic most (7x a step at batch 1, 1.4-2x at
batch 64: torchao quantizes each matmul's input with a few small ops), so int8 is for large
batches compiled, not for a sentence at a time. Both keep test BLEU within 0.3 of float32
(dynamic +0.07, weight-only -0.20).

torchao is the maintained successor of `torch.ao.quantization` (deprecated): an optional extra,
`mha[int8]`, imported only when int8 is asked for.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from types import ModuleType

import torch
from torch import nn

from mha.configs.schema import ConfigError
from mha.model.fused import FusedAttention

QUANTIZATIONS = ("float32", "int8")  # the names `mha export --quantization` uses
INSTALL = "pip install 'mha[int8]'"
# torchao's import logs a line per CUDA kernel library it cannot load on a CPU-only torch, and
# torch's pytree a deprecation line for torchao's enums: neither concerns int8 on the CPU
NOISY_LOGGERS = ("torchao", "torch.utils._pytree")


def check_quantization(name: str | None, device: torch.device | str | None = None) -> None:
    """ConfigError for a name not in QUANTIZATIONS (None: the weights as stored), or int8 for a
    model on `device` other than the CPU (no device: the name alone is checked)."""
    if name is not None and name not in QUANTIZATIONS:
        raise ConfigError(f"--quantization must be one of {', '.join(QUANTIZATIONS)}, "
                          f"got {name!r}")
    if name == "int8" and device is not None and torch.device(device).type != "cpu":
        raise ConfigError(f"--quantization int8 is mha's CPU path (measured and tested on the CPU "
                          f"only), not for device {torch.device(device).type}: use --device cpu, "
                          f"or float32 on the GPU")


def import_torchao() -> ModuleType:
    """torchao.quantization, imported without its import-time log lines; ConfigError saying how
    to install it when it is missing."""
    with _quiet(NOISY_LOGGERS):
        try:
            from torchao import quantization
        except ImportError:
            raise ConfigError(f"--quantization int8 needs torchao, which is not installed; "
                              f"install it with: {INSTALL}") from None
    return quantization


@contextlib.contextmanager
def _quiet(names: tuple[str, ...]) -> Iterator[None]:
    """Only errors from these loggers while the block runs; their levels come back after."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def quantize_int8(model: nn.Module) -> nn.Module:
    """Give `model` (on the CPU, for decoding) dynamic int8 matmuls in every nn.Linear and
    fused projection, in place; returns it. Apply before any torch.compile.

    Raises ConfigError when torchao is missing or the model is not on the CPU.
    """
    device = next(model.parameters()).device
    check_quantization("int8", device)
    quantization = import_torchao()
    # set_inductor_config=False: torchao would otherwise change torch.compile's global settings
    # (measured: they did not make the compiled int8 step faster)
    config = quantization.Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)
    quantization.quantize_(model, config, lambda module, _: isinstance(module, nn.Linear))
    # a FusedAttention's own stacked weight (a buffer, not an nn.Linear); its w_q ... were above
    quantization.quantize_(model, config, lambda module, _: isinstance(module, FusedAttention))
    return model
