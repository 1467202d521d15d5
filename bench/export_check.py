"""How faithful is `mha export --to ctranslate2` on a trained run? Greedy outputs and BLEU.

Exports the run's checkpoint (float32) into a temporary folder, then over the run's test split
(test_2016_flickr for the Multi30k presets) or --src-file/--ref-file:
  1. decodes each sentence alone with mha and with CTranslate2 float32 and int8, and counts equal
     greedy outputs; a difference where mha's top-2 logit margin is below 1e-4 is a near tie;
  2. translates the whole set batched with each and scores it with sacreBLEU.

    python bench/export_check.py RUN [--limit N] [--threads 2]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from mha.inference.ct2 import CTranslate2Engine, compare_greedy
from mha.inference.evaluate import eval_set, score
from mha.inference.export import export
from mha.inference.run import load_model
from mha.inference.translate import MhaEngine, encode_sources, translate_lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--limit", type=int, default=None, help="Use only the first N sentences.")
    parser.add_argument("--src-file", type=Path, default=None)
    parser.add_argument("--ref-file", type=Path, default=None)
    parser.add_argument("--checkpoint", default="best")
    parser.add_argument("--threads", type=int, default=2, help="torch and CTranslate2 threads.")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    texts, references, name = eval_set(args.run, "test", args.src_file, args.ref_file)
    texts, references = texts[:args.limit], references[:args.limit]
    model, tokenizer, cfg = load_model(args.run, args.checkpoint, "cpu")
    sources = [ids for ids in encode_sources(tokenizer, texts, cfg.model.max_tokens) if ids]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        exported = export(args.run, output=Path(folder) / "ct2", which=args.checkpoint)
        start = time.perf_counter()
        hypotheses = list(translate_lines(MhaEngine(model, tokenizer, cfg.decode), texts,
                                          batch_size=args.batch_size, beam=1))
        rows.append(("mha", None, score(hypotheses, references), time.perf_counter() - start))
        for compute_type in ("float32", "int8"):
            engine = CTranslate2Engine(exported, compute_type=compute_type, threads=args.threads)
            agreement = compare_greedy(model, engine, sources)
            start = time.perf_counter()
            hypotheses = list(translate_lines(engine, texts, batch_size=args.batch_size, beam=1))
            rows.append((f"CTranslate2 {compute_type}", agreement, score(hypotheses, references),
                         time.perf_counter() - start))
    print(f"{args.run} ({cfg.model.encoder_layers}+{cfg.model.decoder_layers} layers, d_model "
          f"{cfg.model.d_model}), {name}: {len(texts)} sentences, greedy, {args.threads} threads, "
          f"{platform.processor() or platform.machine()}\n")
    print("| decoder | greedy outputs equal to mha's (one sentence at a time) | near ties "
          "(margin < 1e-4) | BLEU | chrF | seconds, batched |")
    print("|---|---|---|---|---|---|")
    for label, agreement, scores, seconds in rows:
        equal = f"{agreement.equal}/{agreement.sentences}" if agreement else "-"
        ties = str(len(agreement.near_ties)) if agreement else "-"
        print(f"| {label} | {equal} | {ties} | {scores['bleu']:.2f} | {scores['chrf']:.2f} | "
              f"{seconds:.1f} |")
    print(f"\nint8 BLEU minus float32 BLEU: {rows[2][2]['bleu'] - rows[1][2]['bleu']:+.2f}")


if __name__ == "__main__":
    main()
