"""`--engine`: translate with mha's own decoder or with the model `mha export` wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mha.configs.schema import ConfigError, DecodeConfig
from mha.inference.translate import Engine

ENGINES = ("mha", "ctranslate2")
MODEL = "Model and engine"
QuantizationOpt = Annotated[str | None, typer.Option(
    "--quantization", help="int8: int8 matmuls on the CPU (mha: torchao's dynamic int8, faster "
    "than float32 only with torch.compile at large batches; ctranslate2: compute type int8); "
    "float32 (default: the weights as stored).", rich_help_panel=MODEL, show_default=False)]


def check_engine(engine: str, own_decoder_options: bool = False) -> None:
    """ConfigError for an unknown engine, or mha-only options (--no-cache, --attention,
    --ensemble) with another engine."""
    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine != "mha" and own_decoder_options:
        raise ConfigError(f"--no-cache, --attention and --ensemble work on mha's own decoder, "
                          f"not --engine {engine}")


def check_ensemble(others: list[str] | None, engine: str, attention: bool) -> None:
    """ConfigError for --ensemble with another engine or with --attention."""
    check_engine(engine, bool(others))
    if others and attention:
        raise ConfigError("--attention draws one model's attention: leave out --ensemble")


def compiling(compile: bool | None, lines: list[str] | None, hooked: bool) -> tuple:
    """open_engine's compile and lines: --alignments, --token-scores eager; stdin: uncounted."""
    return (False if hooked else compile), (None if lines is None else len(lines))


def open_engine(
    run_dir: Path, engine: str, which: str, device: str, use_cache: bool = True,
    ensemble: list[str] | None = None, quantization: str | None = None,
    compile: bool | None = False, lines: int | None = None,
) -> tuple[Engine, DecodeConfig]:
    """The engine `--engine` names, for `mha translate` and `mha eval`, with the run's decode
    defaults (mha's own decoder: from checkpoint `which`, with the `--ensemble` members, its
    matmuls in int8 with `quantization` int8: inference/quantize.py; greedy compiled as
    `compile` says, None: as the run's decode.compile says for `lines` input lines,
    inference/fast_decode.py)."""
    from mha.inference.quantize import check_quantization
    from mha.inference.run import pick_device

    if engine == "ctranslate2":
        from mha.inference.ct2 import CTranslate2Engine

        check_quantization(quantization)  # CTranslate2 has int8 on CUDA too
        exported = CTranslate2Engine(run_dir, device=device,
                                     compute_type=quantization or "default")
        return exported, exported.cfg.decode
    from mha.inference.ensemble import load_ensemble
    from mha.inference.quantize import quantize_int8
    from mha.inference.run import load_model
    from mha.inference.translate import MhaEngine

    check_quantization(quantization, pick_device(device))  # before the model loads
    model, tokenizer, cfg = (load_ensemble(run_dir, which, ensemble, device) if ensemble
                             else load_model(run_dir, which, device))
    if quantization == "int8":
        quantize_int8(model)
    from mha.inference.fast_decode import compile_wanted

    wanted = compile_wanted(cfg.decode.compile if compile is None else compile, lines)
    return MhaEngine(model, tokenizer, cfg.decode, use_cache=use_cache, compile=wanted), cfg.decode
