"""Continuous batching (model/stream_decode.py) against whole batches, in one process, no server:
what N one-sentence clients can get from each way of batching, set against offline decoding.

Cases, on a run's test split (greedy; compiled unless --no-compile, as `mha serve` decodes):
- offline: `translate_lines`, sorted by length, batches of decode.batch_size (the target's base);
- whole batches of N in arrival order (what inference/batcher.py gives N clients at best);
- a running batch of N: N sentences in flight, each one that ends replaced by the next line,
  which joins as inference/stream_runner.py lets it (what `mha serve` gives N clients with no
  network between).
Each case runs --repeat times, in turn; the table gives each one's best and its outputs that
differ from offline's.

    python bench/stream_speed.py RUN [--clients 32] [--repeat 3] [--limit N] [--no-compile]
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch


def stream_all(runner, lines: list[list[int]], clients: int) -> list:
    """Decode every line with `clients` in flight (inference/stream_runner.py's Runner, as
    `mha serve` runs it): each that ends is replaced by the next line at the next step."""
    found: list = [None] * len(lines)
    waiting = iter(range(len(lines)))

    def take(count: int) -> None:
        runner.take([(row, lines[row]) for _, row in zip(range(count), waiting)])

    take(clients)
    while not runner.idle:
        ended = runner.step()
        for row, hypothesis in ended:
            found[row] = hypothesis
        take(len(ended))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--join-share", type=float, default=None, help="stream_runner's "
                        "JOIN_SHARE instead of its own")
    parser.add_argument("--join-steps", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from mha.data.prepare import load_prepared
    from mha.data.tokenizer import Tokenizer
    from mha.inference import stream_runner, translate
    from mha.inference.provenance import cpu_info
    from mha.inference.run import load_model
    from mha.model.stream_decode import GreedyStream

    if args.join_share is not None:
        stream_runner.JOIN_SHARE = args.join_share
    if args.join_steps is not None:
        stream_runner.JOIN_STEPS = args.join_steps

    model, tokenizer, cfg = load_model(args.run, "best", "cpu")
    lines = list(load_prepared(args.run).splits["test"]["src"])[:args.limit]
    lines = [line for line in lines if line.strip()]
    arrival = random.Random(0).sample(range(len(lines)), len(lines))  # clients' order
    engine = translate.MhaEngine(model, tokenizer, cfg.decode, compile=args.compile)
    for size in (8, 1):  # compiled: both decoders, before any timing
        translate.translate_chunk(engine, lines[:size], batch_size=size, beam=1)
    decode = cfg.decode
    stream = GreedyStream(engine.greedy_steps(), bos=Tokenizer.BOS, eos=Tokenizer.EOS,
                          max_len_a=decode.max_len_a, max_len_b=decode.max_len_b,
                          length_penalty=decode.length_penalty)
    sources = translate.encode_sources(tokenizer, [lines[i] for i in arrival], model.cfg.max_tokens)
    n = args.clients

    def offline() -> list[str]:
        return list(translate.translate_lines(engine, lines, batch_size=decode.batch_size, beam=1))

    def whole() -> list[str]:
        ordered = [lines[i] for i in arrival]
        out = [t for first in range(0, len(ordered), n) for t in translate.translate_chunk(
            engine, ordered[first:first + n], batch_size=n, beam=1)]
        return [out[arrival.index(i)] for i in range(len(lines))]

    def running() -> list[str]:
        found = stream_all(stream_runner.Runner(stream, n), sources, n)
        by_line = {line: tokenizer.decode_tgt(h.ids) for line, h in zip(arrival, found)}
        return [by_line[i] for i in range(len(lines))]

    cases = {f"offline, sorted batches of {decode.batch_size}": offline,
             f"whole batches of {n}, arrival order": whole,
             f"a running batch of {n}": running}
    best = {name: 0.0 for name in cases}
    reference = offline()
    differ = {}
    for _ in range(args.repeat):
        for name, case in cases.items():
            start = time.perf_counter()
            out = case()
            best[name] = max(best[name], len(lines) / (time.perf_counter() - start))
            differ[name] = sum(a != b for a, b in zip(out, reference))
    name, flags = cpu_info()
    shown = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags)
    print(f"{name} ({shown}); {args.threads} torch thread(s); {len(lines)} sentences; run "
          f"{args.run}; {'compiled' if args.compile else 'eager'}; best of {args.repeat}\n")
    print("| case | sentences/s | x offline | outputs unlike offline's |")
    print("|---|---|---|---|")
    base = best[next(iter(cases))]
    for case in cases:
        print(f"| {case} | {best[case]:.1f} | {best[case] / base:.2f} | {differ[case]} |")


if __name__ == "__main__":
    main()
