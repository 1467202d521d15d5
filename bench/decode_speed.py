"""Decoding speed and peak memory of a trained run: greedy with and without the KV cache, beam 4.

Each case runs in a fresh process, so its peak RSS (ru_maxrss) is its own; the table shows that
peak and how far decoding raised it above the loaded model's. Sentences are the run's test split
(test_2016_flickr for the Multi30k presets) or --src-file. Batch-1 cases take the first
--batch1-limit sentences, since uncached decoding one sentence at a time is slow. Each case also
gives the milliseconds a decoder step takes and the MiB of weights one step reads: at batch 1 a
step reads all its weights once, cached or not, and runs the same ops, a cost the cache cannot
save (bench/cache_curve.py shows its gain by output length).

    python bench/decode_speed.py RUN [--limit N] [--batch1-limit 200] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

CASES = [  # (name, beam, use_cache, batch size or None for --batch-size)
    ("greedy, cache", 1, True, 1), ("greedy, no cache", 1, False, 1),
    ("beam 4", 4, True, 1),
    ("greedy, cache", 1, True, None), ("greedy, no cache", 1, False, None),
    ("beam 4", 4, True, None),
]


def sources(run_dir: Path, src_file: Path | None) -> list[str]:
    if src_file is not None:
        from mha.data.files import read_lines

        return read_lines(src_file)
    from mha.data.prepare import load_prepared

    return list(load_prepared(run_dir).splits["test"]["src"])


def child(args: argparse.Namespace) -> None:
    """One case: load, warm up, decode, print a JSON line with time and memory."""
    import torch

    from mha.inference.run import load_model
    from mha.inference.translate import translate_lines

    lines = sources(args.run, args.src_file)[:args.count]
    model, tokenizer, cfg = load_model(args.run, args.checkpoint, args.device)
    options = {"batch_size": args.batch, "beam": args.beam, "use_cache": args.use_cache,
               "decode_cfg": cfg.decode}
    list(translate_lines(model, tokenizer, lines[:2], **options))  # warm-up: first-call costs
    steps = [0]  # decoder steps: the final LayerNorm (or Identity) runs once a step
    model.decoder_norm.register_forward_hook(lambda *_: steps.__setitem__(0, steps[0] + 1))
    if model.output.weight.is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    loaded_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    outputs = list(translate_lines(model, tokenizer, lines, **options))
    if model.output.weight.is_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    gpu = torch.cuda.max_memory_allocated() if model.output.weight.is_cuda else 0
    print(json.dumps({"seconds": seconds, "sentences": len(outputs), "steps": steps[0],
                      "step_weights_mib": step_weights(model, args.use_cache) / 2**20,
                      "peak_kib": peak_kib,
                      "decode_kib": peak_kib - loaded_kib, "gpu_bytes": gpu,
                      "threads": torch.get_num_threads(), "device": str(model.output.weight.device),
                      "model": f"{cfg.model.encoder_layers}+{cfg.model.decoder_layers} layers, "
                               f"d_model {cfg.model.d_model}"}))


def step_weights(model, use_cache: bool) -> int:
    """Bytes of weights one decoder step reads: every decoder layer and the output layer; with the
    cache, encoder-decoder attention's W_K and W_V are not among them (applied once a sentence)."""
    skip = {id(p) for layer in model.decoder for p in [*layer.cross_attn.w_k.parameters(),
                                                       *layer.cross_attn.w_v.parameters()]}
    params = [*model.decoder.parameters(), *model.decoder_norm.parameters(), model.output.weight]
    return sum(p.numel() * p.element_size() for p in params if not (use_cache and id(p) in skip))


def run_case(args: argparse.Namespace, beam: int, use_cache: bool, batch: int, count: int) -> dict:
    command = [sys.executable, __file__, str(args.run), "--child", "--beam", str(beam),
               "--batch", str(batch), "--count", str(count), "--checkpoint", args.checkpoint,
               "--device", args.device] + ([] if use_cache else ["--no-cache"])
    if args.src_file:
        command += ["--src-file", str(args.src_file)]
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--limit", type=int, default=None, help="Use only the first N sentences.")
    parser.add_argument("--batch1-limit", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--src-file", type=Path, default=None)
    parser.add_argument("--checkpoint", default="best")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--beam", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no-cache", dest="use_cache", action="store_false",
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    total = len(sources(args.run, args.src_file)[:args.limit])
    rows, speed = [], {}
    for name, beam, use_cache, batch in CASES:
        batch = batch or args.batch_size
        count = min(total, args.batch1_limit) if batch == 1 else total
        result = run_case(args, beam, use_cache, batch, count)
        speed[name, batch] = result["sentences"] / result["seconds"]
        gpu = f" / {result['gpu_bytes'] / 2**20:.0f}" if result["gpu_bytes"] else ""
        rows.append(f"| {name} | {batch} | {result['sentences']} | {result['seconds']:.2f} | "
                    f"{speed[name, batch]:.1f} | "
                    f"{1000 * result['seconds'] / result['steps']:.2f} | "
                    f"{result['step_weights_mib']:.1f} | {result['peak_kib'] / 1024:.0f} | "
                    f"{result['decode_kib'] / 1024:.0f}{gpu} |")
    print(f"Decoding {args.run} ({result['model']}) on {result['device']}, "
          f"{result['threads']} torch threads, {platform.processor() or platform.machine()}; "
          f"batch-1 cases on the first {min(total, args.batch1_limit)} of {total} sentences.\n")
    print("| case | batch | sentences | seconds | sentences/s | ms per decoder step | "
          "weights a step reads, MiB | peak RSS MiB | decoding's own peak MiB (RSS / GPU) |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    cached, uncached = speed["greedy, cache", 1], speed["greedy, no cache", 1]
    print(f"\ncache speed-up at batch 1: {cached / uncached:.1f}x (target >= 5x); "
          f"batched cached greedy: {speed['greedy, cache', args.batch_size]:.0f} sentences/s "
          f"(target >= 150 at 3+3 layers, d_model 256)")


if __name__ == "__main__":
    main()
