"""Compiled greedy (inference/fast_decode.py) against the eager `greedy` on a run's test split:
how many outputs differ, and whether each difference starts where the eager decoder's two best
logits lie closer than --margin (1e-4, the rule the export test uses): a tie that float rounding
may break either way, not a bug.

    python bench/fast_decode_check.py RUN [--limit N] [--batch-size 64] [--margin 1e-4]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def first_margin(model, src: torch.Tensor, ids: list[int], other: list[int], bos: int) -> float:
    """The eager model's top-2 logit margin at the first step where ids and other part."""
    step = next((i for i, (a, b) in enumerate(zip(ids, other)) if a != b), min(len(ids),
                                                                             len(other)))
    tgt_in = torch.tensor([[bos, *ids[:step]]])
    with torch.inference_mode():
        logits = model(src[None], tgt_in)[0, -1].float()  # (V,)
    top = logits.topk(2).values
    return float(top[0] - top[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--margin", type=float, default=1e-4)
    args = parser.parse_args()
    from mha.data.prepare import load_prepared
    from mha.data.tokenizer import Tokenizer
    from mha.inference.run import load_model
    from mha.inference.translate import _padded, batches, encode_sources
    from mha.model.decode import greedy

    model, tokenizer, cfg = load_model(args.run, "best", "cpu")
    lines = list(load_prepared(args.run).splits["test"]["src"])[:args.limit]
    sources = encode_sources(tokenizer, lines, model.cfg.max_tokens)
    options = {"bos": Tokenizer.BOS, "eos": Tokenizer.EOS, "max_len_a": cfg.decode.max_len_a,
               "max_len_b": cfg.decode.max_len_b, "length_penalty": cfg.decode.length_penalty}
    from mha.inference.fast_decode import CompiledGreedy

    fast = CompiledGreedy(model, bos=Tokenizer.BOS, eos=Tokenizer.EOS)  # as MhaEngine runs it
    eager_out, fast_out = {}, {}
    start = time.perf_counter()
    for batch in batches(sources, args.batch_size):
        src_ids = _padded([sources[i] for i in batch], model.pad_id)
        for i, a, b in zip(batch, greedy(model, src_ids, **options), fast(src_ids, **options)):
            eager_out[i], fast_out[i] = a, b
    differ = [i for i in eager_out if eager_out[i].ids != fast_out[i].ids]
    ties = [i for i in differ if first_margin(model, torch.tensor(sources[i]), eager_out[i].ids,
                                              fast_out[i].ids, Tokenizer.BOS) < args.margin]
    same = [i for i in eager_out if i not in differ]
    worst = max((abs(eager_out[i].log_prob - fast_out[i].log_prob) for i in same), default=0)
    seconds = fast.compile_seconds
    print(f"{len(eager_out)} sentences (compiled in {seconds:.1f} s, decoded twice in "
          f"{time.perf_counter() - start:.1f} s): {len(differ)} outputs differ, {len(ties)} of "
          f"them where the two best logits lie within {args.margin:g}; {len(differ) - len(ties)} "
          f"beyond it. Largest log-probability difference among equal outputs: {worst:.2e}")


if __name__ == "__main__":
    main()
