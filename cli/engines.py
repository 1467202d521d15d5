"""`--engine`: translate with mha's own decoder or with the model `mha export` wrote."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from mha.configs.schema import ConfigError
from mha.data.tokenizer import Tokenizer

ENGINES = ("mha", "ctranslate2")


def check_engine(engine: str, own_decoder_options: bool = False) -> None:
    """ConfigError for an unknown engine, or mha-only options (--no-cache, --attention) with
    another engine."""
    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine != "mha" and own_decoder_options:
        raise ConfigError(f"--no-cache and --attention work on mha's own decoder, not --engine "
                          f"{engine}")


def translate_exported(
    run_dir: Path, device: str, lines: list[str] | None, batch_size: int | None,
    beam: int | None, input_file: Path | None,
) -> Iterator[str]:
    """`mha translate --engine ctranslate2`: lines (None: stdin) with the run's decode defaults,
    warning about characters the tokenizer does not know, as mha's own decoder does."""
    from mha.cli.stdin import stdin_chunks
    from mha.inference.ct2 import CTranslate2Engine
    from mha.inference.translate import warn_unknown_characters, warn_unknown_in_chunks

    engine = CTranslate2Engine(run_dir, device=device)
    options = {"batch_size": batch_size or engine.cfg.decode.batch_size,
               "beam": beam or engine.cfg.decode.beam}
    if lines is not None:
        warn_unknown_characters(engine.tokenizer, lines, str(input_file or "the arguments"))
        return engine.translate_lines(lines, **options)
    chunks = warn_unknown_in_chunks(engine.tokenizer, stdin_chunks(options["batch_size"]))
    return engine.translate_chunks(chunks, **options)


def line_translator(
    run_dir: Path, engine: str, which: str, device: str, batch_size: int | None,
    beam: int | None,
) -> tuple[Callable[[list[str]], Iterable[str]], Tokenizer, int]:
    """(translate(lines) -> a line each, its tokenizer, beam) for `mha eval`, with the run's
    decode defaults."""
    if engine == "ctranslate2":
        from mha.inference.ct2 import CTranslate2Engine

        exported = CTranslate2Engine(run_dir, device=device)
        decode, translate = exported.cfg.decode, exported.translate_lines
        tokenizer = exported.tokenizer
    else:
        from mha.inference.run import load_model
        from mha.inference.translate import translate_lines

        model, tokenizer, cfg = load_model(run_dir, which, device)
        decode = cfg.decode
        translate = functools.partial(translate_lines, model, tokenizer, use_cache=True,
                                      decode_cfg=decode)
    beam = beam or decode.beam
    return functools.partial(translate, batch_size=batch_size or decode.batch_size,
                             beam=beam), tokenizer, beam
