"""Decoding speed and peak memory of a trained run: greedy with and without the KV cache, beam 4.

Each case runs in a fresh process, so its peak RSS (ru_maxrss) is its own; the table shows that
peak and how far decoding raised it above the loaded model's. Sentences are the run's test split
(test_2016_flickr for the Multi30k presets) or --src-file. Batch-1 cases take the first
--batch1-limit sentences, since uncached decoding one sentence at a time is slow. Each case also
gives the milliseconds a decoder step takes and the MiB of weights one step reads: at batch 1 a
step reads all its weights once, cached or not, and runs the same ops, a cost the cache cannot
save (bench/cache_curve.py shows its gain by output length).

With torchao installed, mha's cached greedy also runs with int8 matmuls (`--quantization int8`,
inference/quantize.py: eager here, so slower than float32; int8 pays only compiled).
With ctranslate2 installed, the run is also exported (`mha export`, float32) into a temporary
folder and decoded greedily by CTranslate2 float32 and int8 (weights quantized on load), on the
same sentences and batching as mha's rows, with `intra_threads` set to --ct2-threads.

    python bench/decode_speed.py RUN [--limit N] [--batch1-limit 200] [--device auto]
                                     [--only "greedy, cache" --only CTranslate2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = [  # (name, beam, use_cache, batch size or None for --batch-size); "greedy, cache" is
    # mha's default path, compiled as `mha eval` compiles it for the 1,000 test sentences
    ("greedy, cache", 1, True, 1), ("greedy, cache, eager", 1, True, 1),
    ("greedy, no cache", 1, False, 1), ("beam 4", 4, True, 1),
    ("greedy, cache", 1, True, None), ("greedy, cache, eager", 1, True, None),
    ("greedy, no cache", 1, False, None), ("beam 4", 4, True, None),
]
INT8_CASES = [  # (name, batch size or None for --batch-size): cached greedy, --quantization int8
    ("greedy, cache, int8", 1), ("greedy, cache, int8", None),
]
CT2_CASES = [  # (name, compute type, batch size or None for --batch-size): greedy
    ("CTranslate2 float32, greedy", "float32", 1), ("CTranslate2 int8, greedy", "int8", 1),
    ("CTranslate2 float32, greedy", "float32", None), ("CTranslate2 int8, greedy", "int8", None),
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

    from mha.inference.fast_decode import AUTO_MIN_LINES, FROZEN_MIN_BATCH, compile_wanted
    from mha.inference.run import load_model
    from mha.inference.translate import MhaEngine, translate_lines

    lines = sources(args.run, args.src_file)[:args.count]
    model, tokenizer, cfg = load_model(args.run, args.checkpoint, args.device)
    if args.quantization == "int8":
        from mha.inference.quantize import quantize_int8

        quantize_int8(model)
    compile = compile_wanted(cfg.decode.compile if args.compile else "false", AUTO_MIN_LINES)
    engine = MhaEngine(model, tokenizer, cfg.decode, use_cache=args.use_cache, compile=compile)
    options = {"batch_size": args.batch, "beam": args.beam}
    warm_up = lines[:min(args.batch, FROZEN_MIN_BATCH)]  # compiled: the decoder this batch
    list(translate_lines(engine, warm_up, **options))  # size takes; first-call costs
    steps = [0]  # decoder steps: the final LayerNorm (or Identity) runs once a step
    if engine.fast is None:  # a hook would send the compiled path back to eager: it counts
        model.decoder_norm.register_forward_hook(lambda *_: steps.__setitem__(0, steps[0] + 1))
    if model.output.weight.is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    loaded_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    outputs = list(translate_lines(engine, lines, **options))
    if model.output.weight.is_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    gpu = torch.cuda.max_memory_allocated() if model.output.weight.is_cuda else 0
    steps[0] += engine.fast.steps if engine.fast is not None else 0
    print(json.dumps({"seconds": seconds, "sentences": len(outputs), "steps": steps[0],
                      "compile_seconds": engine.compile_seconds,
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
    params = [p for name, p in model.decoder.named_parameters()  # not int8's copy of a stack
              if not name.endswith("attn.weight")]  # (inference/quantize.py) besides W_Q ...
    params += [*model.decoder_norm.parameters(), model.output.weight]
    return sum(nbytes(p) for p in params if not (use_cache and id(p) in skip))


def nbytes(weight) -> int:
    """Bytes of a weight; an int8 one (torchao's) is its int8 data and its float scales."""
    parts = (weight.qdata, weight.scale) if hasattr(weight, "qdata") else (weight,)
    return sum(part.numel() * part.element_size() for part in parts)


def ct2_child(args: argparse.Namespace) -> None:
    """One CTranslate2 case: the same sentences, batching and JSON line as `child`."""
    from mha.inference.ct2 import CTranslate2Engine
    from mha.inference.translate import translate_lines

    lines = sources(args.run, args.src_file)[:args.count]
    engine = CTranslate2Engine(args.export, compute_type=args.ct2, threads=args.ct2_threads)
    list(translate_lines(engine, lines[:2], batch_size=args.batch, beam=1))  # warm-up
    loaded_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    outputs = list(translate_lines(engine, lines, batch_size=args.batch, beam=1))
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "sentences": len(outputs), "steps": None,
                      "step_weights_mib": None, "peak_kib": peak_kib,
                      "decode_kib": peak_kib - loaded_kib, "gpu_bytes": 0}))


def run_case(args: argparse.Namespace, options: list[str], batch: int, count: int) -> dict:
    command = [sys.executable, __file__, str(args.run), "--child", "--batch", str(batch),
               "--count", str(count), "--checkpoint", args.checkpoint, "--device", args.device,
               "--ct2-threads", str(args.ct2_threads), *options]
    if args.src_file:
        command += ["--src-file", str(args.src_file)]
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cases(args: argparse.Namespace, export_dir: Path | None) -> list[tuple[str, list[str], int]]:
    """(name, child options, batch size) for every case to time."""
    mha = [(name, ["--beam", str(beam)] + ([] if use_cache else ["--no-cache"])
            + (["--eager"] if name.endswith("eager") else []),
            batch or args.batch_size) for name, beam, use_cache, batch in CASES]
    mha += [(name, ["--quantization", "int8"], batch or args.batch_size)
            for name, batch in INT8_CASES if has_torchao()]
    if export_dir is None:
        return mha
    return mha + [(name, ["--ct2", compute_type, "--export", str(export_dir)],
                   batch or args.batch_size) for name, compute_type, batch in CT2_CASES]


def has_torchao() -> bool:
    from mha.configs.schema import ConfigError
    from mha.inference.quantize import import_torchao

    try:
        import_torchao()
    except ConfigError as error:
        print(f"no int8 rows: {error}")
        return False
    return True


def export_run(args: argparse.Namespace, folder: Path) -> Path | None:
    """The run exported to CTranslate2 (float32) in folder, or None without ctranslate2."""
    from mha.inference.export import ExportError, export, import_ctranslate2

    try:
        import_ctranslate2()
    except ExportError as error:
        print(f"no CTranslate2 rows: {error}")
        return None
    return export(args.run, output=folder / "ct2", which=args.checkpoint)


def row(name: str, batch: int, result: dict) -> str:
    per_step = (f"{1000 * result['seconds'] / result['steps']:.2f}" if result["steps"] else "-")
    weights = f"{result['step_weights_mib']:.1f}" if result["step_weights_mib"] else "-"
    gpu = f" / {result['gpu_bytes'] / 2**20:.0f}" if result["gpu_bytes"] else ""
    return (f"| {name} | {batch} | {result['sentences']} | {result['seconds']:.2f} | "
            f"{result['sentences'] / result['seconds']:.1f} | {per_step} | {weights} | "
            f"{result['peak_kib'] / 1024:.0f} | {result['decode_kib'] / 1024:.0f}{gpu} |")


def main() -> None:
    args = parse_args()
    if args.child:
        return ct2_child(args) if args.ct2 else child(args)
    total = len(sources(args.run, args.src_file)[:args.limit])
    best: dict[tuple[str, int], dict] = {}  # the fastest of --repeat turns per (case, batch)
    with tempfile.TemporaryDirectory() as folder:
        export_dir = export_run(args, Path(folder))
        chosen = [case for case in cases(args, export_dir)
                  if not args.only or any(part in case[0] for part in args.only)]
        for _ in range(args.repeat):  # cases take turns, so a busy spell hits them alike
            for name, options, batch in chosen:
                count = min(total, args.batch1_limit) if batch == 1 else total
                result = run_case(args, options, batch, count)
                if (name, batch) not in best or result["seconds"] < best[name, batch]["seconds"]:
                    best[name, batch] = result
    info = next(result for result in best.values() if "model" in result)
    print(f"Decoding {args.run} ({info['model']}) on {info['device']}, "
          f"{info['threads']} torch threads, CTranslate2 intra_threads {args.ct2_threads}, "
          f"{platform.processor() or platform.machine()}; batch-1 cases on the first "
          f"{min(total, args.batch1_limit)} of {total} sentences; best of {args.repeat}.\n")
    print("| case | batch | sentences | seconds | sentences/s | ms per decoder step | "
          "weights a step reads, MiB | peak RSS MiB | decoding's own peak MiB (RSS / GPU) |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(row(name, batch, result) for (name, batch), result in best.items()))
    summary({key: result["sentences"] / result["seconds"] for key, result in best.items()},
            args.batch_size)
    compiled = [result["compile_seconds"] for (name, _), result in best.items()
                if name == "greedy, cache" and result.get("compile_seconds")]
    if compiled:  # once a process, before the timing; warm or cold inductor cache
        print(f"greedy, cache: compiled once in {min(compiled):.1f}-{max(compiled):.1f} s "
              f"(a process each case, left out of its seconds)")


def summary(speed: dict[tuple[str, int], float], batch_size: int) -> None:
    """The ratios the README quotes, for the cases that ran."""
    print()
    if ("greedy, cache", 1) in speed and ("greedy, no cache", 1) in speed:
        print(f"cache speed-up at batch 1: "
              f"{speed['greedy, cache', 1] / speed['greedy, no cache', 1]:.1f}x (target >= 5x)")
    for batch in (1, batch_size):
        for compute_type in ("float32", "int8"):
            theirs = speed.get((f"CTranslate2 {compute_type}, greedy", batch))
            if theirs and ("greedy, cache", batch) in speed:
                print(f"batch {batch}: CTranslate2 {compute_type} / mha cached greedy: "
                      f"{theirs / speed['greedy, cache', batch]:.2f}x")
        theirs, ours = (speed.get(("CTranslate2 int8, greedy", batch)),
                        speed.get(("greedy, cache, int8", batch)))
        if theirs and ours:
            print(f"batch {batch}: CTranslate2 int8 / mha cached greedy int8: {theirs / ours:.2f}x")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--limit", type=int, default=None, help="Use only the first N sentences.")
    parser.add_argument("--batch1-limit", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--src-file", type=Path, default=None)
    parser.add_argument("--checkpoint", default="best")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--ct2-threads", type=int, default=2, help="CTranslate2 intra_threads.")
    parser.add_argument("--only", action="append", default=[],
                        help="Run only cases whose name holds this text (repeatable).")
    parser.add_argument("--repeat", type=int, default=1,
                        help="Time each case N times (taking turns), keep the fastest.")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--beam", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no-cache", dest="use_cache", action="store_false",
                        help=argparse.SUPPRESS)
    parser.add_argument("--quantization", default=None, help=argparse.SUPPRESS)  # int8
    parser.add_argument("--eager", dest="compile", action="store_false", help=argparse.SUPPRESS)
    parser.add_argument("--ct2", default=None, help=argparse.SUPPRESS)  # compute type
    parser.add_argument("--export", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    main()
