"""Does int8 keep the translations? BLEU of greedy decoding on a run's test split with mha float32,
mha int8 (`--quantization int8`, inference/quantize.py) and CTranslate2 float32 and int8.

Each row gives sacreBLEU's cased BLEU, its difference from mha float32's, how many of the
sentences come out different from mha float32's, and the decoding time (one pass, after a
warm-up batch; a quality check, not a speed bench: bench/decode_speed.py times). The target of
issue 24: mha int8 within 0.3 BLEU of mha float32. CTranslate2 decodes the run exported into a
temporary folder (float32 weights, quantized on load as decode_speed.py does); without
ctranslate2 its rows are left out.

    python bench/int8_check.py RUN [--split test] [--batch-size 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from mha.inference.evaluate import eval_set, score
from mha.inference.translate import Engine, translate_lines

TARGET = 0.3  # BLEU: int8 within this much of float32


def mha_engine(run: Path, which: str, quantization: str) -> Engine:
    from mha.inference.quantize import quantize_int8
    from mha.inference.run import load_model
    from mha.inference.translate import MhaEngine

    model, tokenizer, cfg = load_model(run, which, "cpu")
    if quantization == "int8":
        quantize_int8(model)
    return MhaEngine(model, tokenizer, cfg.decode)


def ct2_engines(run: Path, which: str, folder: Path, threads: int) -> dict[str, Engine]:
    """CTranslate2 float32 and int8 on the exported run; none without ctranslate2."""
    from mha.inference.ct2 import CTranslate2Engine
    from mha.inference.export import ExportError, export, import_ctranslate2

    try:
        import_ctranslate2()
    except ExportError as error:
        print(f"no CTranslate2 rows: {error}")
        return {}
    exported = export(run, output=folder / "ct2", which=which)
    return {f"CTranslate2 {kind}": CTranslate2Engine(exported, compute_type=kind, threads=threads)
            for kind in ("float32", "int8")}


def decode(engine: Engine, sources: list[str], batch_size: int) -> tuple[list[str], float]:
    with torch.inference_mode():
        list(translate_lines(engine, sources[:batch_size], batch_size=batch_size, beam=1))
        start = time.perf_counter()
        hypotheses = list(translate_lines(engine, sources, batch_size=batch_size, beam=1))
    return hypotheses, time.perf_counter() - start


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    sources, references, name = eval_set(args.run, args.split)
    rows: dict[str, tuple[list[str], float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        engines = {f"mha {kind}": mha_engine(args.run, args.checkpoint, kind)
                   for kind in ("float32", "int8")}
        engines |= ct2_engines(args.run, args.checkpoint, Path(folder), args.threads)
        for label, engine in engines.items():
            rows[label] = decode(engine, sources, args.batch_size)
    base_hyps = rows["mha float32"][0]
    base_bleu = score(base_hyps, references)["bleu"]
    print(f"Greedy decoding of {args.run}'s {name} split ({len(sources)} sentences), batch "
          f"{args.batch_size}, {args.threads} thread(s), "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}.\n")
    print("| engine | BLEU | vs mha float32 | sentences unlike mha float32's | seconds |")
    print("|---|---|---|---|---|")
    for label, (hypotheses, seconds) in rows.items():
        bleu = score(hypotheses, references)["bleu"]
        differ = sum(a != b for a, b in zip(hypotheses, base_hyps))
        print(f"| {label} | {bleu:.2f} | {bleu - base_bleu:+.2f} | {differ} of {len(sources)} | "
              f"{seconds:.1f} |")
    change = score(rows["mha int8"][0], references)["bleu"] - base_bleu
    print(f"\nmha int8 against float32: {change:+.2f} BLEU "
          f"({'within' if abs(change) <= TARGET else 'beyond'} the target of {TARGET})")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--split", default="test", help="The run's prepared split: test or val.")
    parser.add_argument("--checkpoint", default="best")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads and CTranslate2 intra_threads.")
    return parser.parse_args()


if __name__ == "__main__":
    main()
