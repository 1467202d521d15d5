"""When mha decodes greedily with the compiled static-cache step (model/static_decode.py), and
how it compiles it.

`decode.compile` (config) or `--compile/--no-compile` (translate, eval, serve): true, false, or
auto, which compiles when the number of input lines is known and at least AUTO_MIN_LINES. Compiling
costs once per process (measured below); the per-sentence gain repays it only over many lines.
Plain greedy decoding alone takes the compiled path; these run eager whatever the setting: beam
search and n-best, sampling, forced prefixes, ensembles, --no-cache, --attention, --alignments,
--token-scores, and a model with forward hooks or head masks when it decodes.

Compiled kernels are kept by inductor's FX graph cache, in torch's own folder
(/tmp/torchinductor_USER unless TORCHINDUCTOR_CACHE_DIR says otherwise, which importing inductor
sets), so a later process compiles faster.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from mha.configs.schema import ConfigError
from mha.model.attention import MultiHeadAttention
from mha.model.static_decode import StaticGreedy, start_state
from mha.model.transformer import Transformer

log = logging.getLogger(__name__)
_serials = itertools.count()  # each compiled decoder's key

# Measured on the en-de preset run (4+4 layers, d_model 128), 1 thread, quiet 2-core AMD EPYC
# (README, "Compiled greedy"): compiling took 15-29 s a process with inductor's cache warm (a
# minute or two cold); the compiled step saved ~3.1 ms a sentence at batch 1 (82 -> 110
# sentences/s) and ~0.72 ms at batch 64 (519 -> 827). So a warm compile repays itself after
# ~8,000 sentences at batch 1 and ~35,000 at batch 64: within one `mha eval` of 1,000 it does
# not, but the default path for that eval is the compiled one (steady state, compiling
# reported apart), hence 1,000; a server (`mha serve`) decodes without end and compiles.
AUTO_MIN_LINES = 1000


def compile_wanted(setting: str | bool, lines: int | None) -> bool:
    """setting: True/False (--compile/--no-compile) or the config's "auto", "true", "false";
    lines: how many input lines (None: not known, e.g. stdin). auto also needs a C++ compiler;
    true without one is a ConfigError."""
    compiler = shutil.which(os.environ.get("CXX", "g++"))  # inductor's C++ compiler on the CPU
    if setting in ("auto", None):
        return lines is not None and lines >= AUTO_MIN_LINES and compiler is not None
    if setting in (True, "true") and compiler is None:
        raise ConfigError(f"--compile (decode.compile true) needs a C++ compiler for "
                          f"torch.compile: {os.environ.get('CXX', 'g++')} was not found; install "
                          f"g++ or decode with --no-compile")
    return setting in (True, "true")


def fast_path_allows(model: torch.nn.Module) -> bool:
    """A plain Transformer (not an ensemble) with no forward hooks and no head masks: the
    compiled step calls no hooks and applies no mask."""
    if not isinstance(model, Transformer):
        return False
    if torch.nn.modules.module._global_forward_hooks or (
            torch.nn.modules.module._global_forward_pre_hooks):
        return False
    return not any(module._forward_hooks or module._forward_pre_hooks or (
        isinstance(module, MultiHeadAttention) and module.head_mask is not None)
        for module in model.modules())


# Batches of at least this many rows decode with the weights frozen into the graph: inductor then
# packs every matmul's weights for oneDNN (`freezing`), whose matmuls beat MKL's on this AMD EPYC
# from about 8 rows (measured, 1 thread, sentences/s unfrozen / frozen: batch 4: 331 / 275,
# batch 8: 363 / 369, batch 16: 404 / 507, batch 64: 457 / 668; bench/decode_profile.py: at
# batch 64 unfrozen, MKL's addmm and mm took 62% of the step). Smaller batches keep MKL.
FROZEN_MIN_BATCH = 8


class CompiledGreedy:
    """StaticGreedy compiled, twice at most: for batches under FROZEN_MIN_BATCH rows and for the
    rest with frozen weights, each compiled on its first batch. `compile_seconds` sums both.
    Called, it decodes a batch; its `encode` and `step` serve model/stream_decode.py's
    GreedyStream, whose batch changes size from step to step."""

    def __init__(self, model: Transformer, *, bos: int, eos: int) -> None:
        self.model, self.bos, self.eos = model, bos, eos
        self.decoders: dict[bool, StaticGreedy] = {}
        self.compile_seconds = 0.0

    @property
    def steps(self) -> int:
        return sum(decoder.steps for decoder in self.decoders.values())

    @contextmanager
    def _decoder(self, rows: int) -> Iterator[StaticGreedy]:
        """The decoder for a batch of `rows` rows (compiled now if not yet), with inductor's
        config set for it: inductor reads `freezing` as it compiles, on a first or later call."""
        frozen = rows >= FROZEN_MIN_BATCH
        with torch._inductor.config.patch(freezing=frozen):
            if frozen not in self.decoders:
                self.decoders[frozen], seconds = compiled_greedy(
                    self.model, bos=self.bos, eos=self.eos, warm_rows=(9,) if frozen else (5, 1))
                self.compile_seconds += seconds
            yield self.decoders[frozen]

    def __call__(self, src_ids: torch.Tensor, **options) -> list:
        with self._decoder(src_ids.shape[0]) as decoder:
            return decoder(src_ids, **options)

    def encode(self, src_ids: torch.Tensor):
        """The stream's encoder: the frozen one from 2 sentences on (its matmuls take a row per
        source token: 2 sentences of 21 tokens 0.87 against 1.14 ms, 3: 1.09 against 1.63;
        one sentence of 14 tokens, 0.55 against 0.57, has a graph of its own in the other)."""
        with self._decoder(FROZEN_MIN_BATCH if src_ids.shape[0] > 1 else 1) as decoder:
            return decoder.encode(src_ids)

    def step(self, state, eos: int, T: int) -> None:
        with self._decoder(state.pos.shape[0]) as decoder:
            decoder.step(state, eos, T)
            decoder.steps += 1


def compiled_greedy(model: Transformer, *, bos: int, eos: int, warm_rows: tuple[int, ...] = (5, 1),
                    **options: object) -> tuple[StaticGreedy, float]:
    """StaticGreedy with its encoder and step compiled by inductor (C++ on the CPU; the weights
    frozen into the graph under `torch._inductor.config.patch(freezing=True)`: CompiledGreedy),
    warmed up on dummy batches of `warm_rows` rows (a batch of 1 has a graph of its own; the
    frozen decoder never meets one: it takes 8+ rows and keeps 2+); returns it and the seconds.

    dynamic=True: one graph serves every batch size of 2 or more, source and output length
    (sizes 0 and 1 are compiled apart: StaticGreedy keeps sources and caches at 2 or more, and a
    batch of 1 gets its graph in the warm-up, which runs a step reading 3 slots of each batch
    size, whatever the dummy batch would decode: a step that ends it at once reads 2).
    TORCH_LOGS=recompiles shows none after it."""
    options = {"cpp_wrapper": True, "guard_filter_fn": _guards, **options}  # `options`: inductor's
    decoder = _KeyedGreedy(model, lambda f: torch.compile(f, dynamic=True, options=options))
    device = next(model.parameters()).device
    start = time.perf_counter()
    for rows in warm_rows:  # (rows, 7): sizes that no other size of the step equals: torch
        # would assume that equality ever after ("duck sizing"); 1 row: a graph of its own
        with torch.inference_mode():
            src_ids = torch.full((rows, 7), eos, device=device)
            state = start_state(model, *decoder.encode(src_ids), bos=bos, max_len_a=1.5,
                                max_len_b=10)
            decoder.step(state, eos, 3)  # a later step, whatever the dummy batch decodes
    seconds = time.perf_counter() - start
    log.info("compiled greedy decoding in %.1f s (once a process; kernels cached in %s)",
             seconds, os.environ.get("TORCHINDUCTOR_CACHE_DIR", "torch's cache folder"))
    decoder.steps = 0
    return decoder, seconds


class _KeyedGreedy(StaticGreedy):
    """StaticGreedy whose compiled encoder and step check few guards before each call (`_guards`):
    the tensors' (dtype, shapes, the dynamic sizes' relations), torch's global state, and `key`,
    this decoder's own, so that another decoder's graph (the frozen one, another model's, its
    weights baked in) is never taken for this one's: a code object's compiled graphs are shared.
    The ~100 weights' and modules' guards are left out: the weights are the graph's constants or
    inputs, and this decoder's model does not change. Measured, batch 1, one thread, quiet
    machine, bench/decode_speed.py: 0.73 ms a step with every guard, 0.53 with these."""

    def __init__(self, model: Transformer, compile) -> None:
        self.key = f"decoder {next(_serials)}"
        super().__init__(model, compile)

    def _encode(self, src_ids: torch.Tensor):
        if not self.key:  # never: reading it makes the compiled graph check its value
            raise ValueError("a decoder without a key")
        return super()._encode(src_ids)

    def _step(self, state, eos: int, T: int) -> None:
        if not self.key:
            raise ValueError("a decoder without a key")
        return super()._step(state, eos, T)


def _guards(entries) -> list[bool]:
    """Which guards a compiled call checks: see _KeyedGreedy."""
    tensors = torch.compiler.keep_tensor_guards_unsafe(entries)
    return [tensor or not entry.name or entry.name.endswith(".key")
            for tensor, entry in zip(tensors, entries)]
