"""What subword sampling costs a batch: encoding time against a training step, and the batch shape.

For each `train.subword_sampling` value, on the first N batches of epoch 0 of a preset: the time
to take the rows and build the Batch (deterministic ids, or sampled ids), the time of one training
step (forward, backward, Adam) on that Batch, sentences and real tokens a batch, the share of
padding, and the share of rows that kept their stored ids (to respect the bound). Markdown table.

    python bench/sampling_cost.py [--preset multi30k_de_en] [--batches 40] [--alpha 0 0.1]
"""

from __future__ import annotations

import argparse
import time

import torch

from mha.configs.schema import load_config
from mha.data.prepare import prepare
from mha.data.sampling import SubwordSampler
from mha.model import Transformer
from mha.training.loss import summed_loss


def measure(cfg, prepared, batches: int) -> dict:
    sampler = SubwordSampler.from_config(cfg, prepared)
    rows = prepared.splits["train"].select_columns(sampler.columns)
    torch.manual_seed(0)
    model = Transformer(cfg.model, prepared.tokenizer.src_vocab_size,
                        prepared.tokenizer.tgt_vocab_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    totals = dict.fromkeys(("encode", "step", "sentences", "tokens", "slots", "kept"), 0.0)
    for position, indices in enumerate(sampler.token_batches(rows).epoch(0)[:batches], start=1):
        started = time.perf_counter()
        taken = rows[indices]
        batch = sampler.collate(taken, 0, position)
        totals["encode"] += time.perf_counter() - started
        started = time.perf_counter()
        loss = summed_loss(model, batch.src_ids, batch.tgt_in, batch.tgt_out,
                           cfg.train.label_smoothing)
        (loss / batch.tgt_tokens).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        totals["step"] += time.perf_counter() - started
        sampled = [[token for token in row if token] for row in batch.src_ids.tolist()]
        totals["kept"] += sum(a == b for a, b in zip(sampled, taken["src_ids"]))
        totals["sentences"] += len(indices)
        totals["tokens"] += batch.src_tokens + batch.tgt_tokens
        totals["slots"] += batch.slots
    return {"alpha": cfg.train.subword_sampling, "encode_ms": 1000 * totals["encode"] / batches,
            "step_ms": 1000 * totals["step"] / batches,
            "sentences": totals["sentences"] / batches, "tokens": totals["tokens"] / batches,
            "padding": 1 - totals["tokens"] / totals["slots"],
            "kept": totals["kept"] / totals["sentences"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="multi30k_de_en")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--alpha", type=float, nargs="+", default=[0.0, 0.1])
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    print("| subword_sampling | take + encode + pad ms | training step ms | encode / step "
          "| sentences | real tokens | padding | src rows kept stored |")
    print("|---|---|---|---|---|---|---|---|")
    for alpha in args.alpha:
        cfg = load_config(args.preset, [*args.overrides, f"train.subword_sampling={alpha}"])
        row = measure(cfg, prepare(cfg), args.batches)
        print(f"| {row['alpha']:g} | {row['encode_ms']:.1f} | {row['step_ms']:.0f} "
              f"| {row['encode_ms'] / row['step_ms']:.1%} | {row['sentences']:.1f} "
              f"| {row['tokens']:.0f} | {row['padding']:.1%} | {row['kept']:.1%} |")


if __name__ == "__main__":
    main()
