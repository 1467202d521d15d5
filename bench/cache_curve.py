"""What the KV cache saves at batch 1, by output length.

Each test sentence is decoded greedily for a fixed number of steps, past EOS, with and without
the cache, and every decoder step is timed. The table sums the steps for outputs of L tokens
(plus the sentence's one encoder pass) and gives the cache's speed-up at that length: without
the cache step t reprocesses t tokens, so the saving grows with L, while a cached step costs about
the same at every length (it reads all the decoder's weights either way).

    python bench/cache_curve.py RUN [--sentences 10] [--lengths 5 10 15 20 30 50 80 120]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


@torch.no_grad()
def step_times(
    model, src_ids: torch.Tensor, steps: int, use_cache: bool,
) -> tuple[float, list[float]]:
    """Seconds of the encoder pass and of each of `steps` greedy decoder steps
    for src_ids (1, S)."""
    from mha.data.tokenizer import Tokenizer
    from mha.model.masks import padding_mask

    start = time.perf_counter()
    src_pad_mask = padding_mask(src_ids, model.pad_id)
    memory = model.encode(src_ids, src_pad_mask)  # (1, S, D)
    encoder = time.perf_counter() - start
    tgt = torch.full((1, 1), Tokenizer.BOS, dtype=torch.long, device=src_ids.device)
    cache = model.new_cache() if use_cache else None
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        hidden = model.decode(tgt[:, -1:] if use_cache else tgt, memory, src_pad_mask, cache)
        next_id = model.logits(hidden[:, -1]).argmax(dim=-1, keepdim=True)  # (1, 1)
        tgt = torch.cat([tgt, next_id], dim=1)  # (1, t + 1)
        times.append(time.perf_counter() - start)
    return encoder, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--sentences", type=int, default=10)
    parser.add_argument("--lengths", type=int, nargs="+", default=[5, 10, 15, 20, 30, 50, 80, 120])
    parser.add_argument("--checkpoint", default="best")
    args = parser.parse_args()

    from mha.data.prepare import load_prepared
    from mha.inference.run import load_model

    model, tokenizer, cfg = load_model(args.run, args.checkpoint, "cpu")
    lengths = [n for n in args.lengths if n < cfg.model.max_positions]
    lines = list(load_prepared(args.run).splits["test"]["src"])[:args.sentences]
    sources = [torch.tensor([ids]) for ids in tokenizer.encode_src(lines)]
    for use_cache in (True, False):  # warm-up: first-call costs
        step_times(model, sources[0], 3, use_cache)
    totals = {True: [0.0] * len(lengths), False: [0.0] * len(lengths)}
    for src_ids in sources:
        for use_cache in (True, False):  # side by side, sentence by sentence
            encoder, times = step_times(model, src_ids, max(lengths), use_cache)
            for i, n in enumerate(lengths):
                totals[use_cache][i] += encoder + sum(times[:n])
    print(f"{args.run} ({cfg.model.encoder_layers}+{cfg.model.decoder_layers} layers, d_model "
          f"{cfg.model.d_model}), batch 1, {torch.get_num_threads()} torch threads, mean over the "
          f"first {len(sources)} test sentences\n")
    print("| output tokens | cached ms/sentence | uncached ms/sentence | cache speed-up |")
    print("|---|---|---|---|")
    for i, n in enumerate(lengths):
        cached, uncached = (1000 * totals[c][i] / len(sources) for c in (True, False))
        print(f"| {n} | {cached:.1f} | {uncached:.1f} | {uncached / cached:.1f}x |")


if __name__ == "__main__":
    main()
