"""Which int8 route for `--quantization int8`? torchao's int8 weight-only and dynamic int8 against
float32, on a trained run: test BLEU (greedy) and the time of one cached decoder step, eager and
under torch.compile, at batch 1 and --batch-size.

The step is the decoder's work for one new token: every decoder layer with its self-attention
cache (--prefix earlier steps) and encoder-decoder cache (a --source-length memory), then the
output projection over the vocabulary; static shapes, so torch.compile traces it once (its time
is shown apart). Routes take turns --repeat times, each keeping its fastest, so a busy spell on a
shared machine hits them alike.

    python bench/int8_routes.py RUN [--batch-size 64] [--threads 1] [--repeat 5] [--no-compile]
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from mha.inference.evaluate import eval_set, score
from mha.inference.quantize import import_torchao
from mha.inference.run import load_model
from mha.inference.translate import MhaEngine, translate_lines
from mha.model.fused import FusedAttention
from mha.model.masks import padding_mask
from mha.model.transformer import DecoderCache, Transformer

ROUTES = ("float32", "int8 weight-only", "int8 dynamic")


def build(run: Path, which: str, route: str) -> tuple[Transformer, MhaEngine]:
    """The run's model for decoding (fused), its matmul weights quantized by `route`."""
    model, tokenizer, cfg = load_model(run, which, "cpu")
    if route != "float32":
        quantization = import_torchao()
        config = (quantization.Int8WeightOnlyConfig if route == "int8 weight-only"
                  else quantization.Int8DynamicActivationInt8WeightConfig)
        config = config(set_inductor_config=False)
        for kind in (nn.Linear, FusedAttention):  # as inference/quantize.py does
            quantization.quantize_(model, config, lambda m, _, kind=kind: isinstance(m, kind))
    return model, MhaEngine(model, tokenizer, cfg.decode)


def cached_step(model: Transformer, batch: int, source_length: int,
                prefix: int) -> Callable[[], torch.Tensor]:
    """A function that runs one decoder step (B, 1) -> logits (B, 1, V) against caches filled by
    a random source and prefix (the same for every route: seeded)."""
    generator = torch.Generator().manual_seed(0)
    src_ids = torch.randint(4, 1000, (batch, source_length), generator=generator)  # (B, S)
    tgt_ids = torch.randint(4, 1000, (batch, prefix + 1), generator=generator)  # (B, P + 1)
    src_pad_mask = padding_mask(src_ids, model.pad_id)
    memory = model.encode(src_ids, src_pad_mask)  # (B, S, D)
    filled = model.new_cache()
    model.decode(tgt_ids[:, :prefix], memory, src_pad_mask, filled)
    kept = [(own.k, own.v, cross.k, cross.v) for own, cross in filled.layers]

    def step() -> torch.Tensor:
        cache = DecoderCache(len(kept))  # a fresh cache each call: every call has one shape
        cache.length = prefix
        for (own, cross), (k, v, cross_k, cross_v) in zip(cache.layers, kept):
            own.k, own.v, cross.k, cross.v = k, v, cross_k, cross_v
        return model.logits(model.decode(tgt_ids[:, prefix:], memory, src_pad_mask, cache))

    return step


def time_steps(steps: dict[str, Callable], repeat: int, calls: int) -> dict[str, float]:
    """Milliseconds a call, the fastest of `repeat` turns of `calls` calls each."""
    best: dict[str, float] = {}
    for _ in range(repeat):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(calls):
                step()
            best[name] = min(best.get(name, float("inf")),
                             1000 * (time.perf_counter() - start) / calls)
    return best


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    sources, references, _ = eval_set(args.run, "test")
    bleu, steps, compile_s = {}, {}, {}
    with torch.inference_mode():
        for route in ROUTES:
            model, engine = build(args.run, args.checkpoint, route)
            hypotheses = list(translate_lines(engine, sources, batch_size=args.batch_size, beam=1))
            bleu[route] = score(hypotheses, references)["bleu"]
            for batch in (1, args.batch_size):
                step = cached_step(model, batch, args.source_length, args.prefix)
                steps[route, batch, "eager"] = step
                if args.compile:
                    compiled = torch.compile(step)
                    start = time.perf_counter()
                    compiled()
                    compile_s[route, batch] = time.perf_counter() - start
                    steps[route, batch, "compiled"] = compiled
        timed = {key: ms for batch in (1, args.batch_size) for key, ms in time_steps(
            {k: f for k, f in steps.items() if k[1] == batch}, args.repeat,
            200 if batch == 1 else 40).items()}
    report(args, bleu, timed, compile_s)


def report(args: argparse.Namespace, bleu: dict, timed: dict, compile_s: dict) -> None:
    print(f"{args.run}: test BLEU of greedy decoding (batch {args.batch_size}) and ms a cached "
          f"decoder step ({args.prefix} earlier steps, source of {args.source_length}), "
          f"{args.threads} thread(s), {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}; fastest of {args.repeat}.\n")
    modes = ("eager", "compiled") if args.compile else ("eager",)
    heads = [f"{mode}, batch {batch}" for batch in (1, args.batch_size) for mode in modes]
    print(f"| route | BLEU | {' | '.join(heads)} |\n|---|---|{'---|' * len(heads)}")
    for route in ROUTES:
        cells = [f"{timed[route, batch, mode]:.3f}" for batch in (1, args.batch_size)
                 for mode in modes]
        print(f"| {route} | {bleu[route]:.2f} | {' | '.join(cells)} |")
    for (route, batch), seconds in compile_s.items():
        print(f"compiling {route} at batch {batch}: {seconds:.1f} s")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--checkpoint", default="best")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--source-length", type=int, default=16)
    parser.add_argument("--prefix", type=int, default=10, help="Earlier steps in the cache.")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    return parser.parse_args()


if __name__ == "__main__":
    main()
