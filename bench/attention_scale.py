"""Why 1/sqrt(d_k)? The notes say the scaling keeps the softmax from saturating and its gradients
from vanishing. This trains the `quick` setting (h = 4, d_k = 32) at a fixed 1,200 updates with
and without it (`model.attention_scale`), three seeds each, and measures at the snapshots kept at
each validation (steps 150, 300, ... 1,200), on the first --limit validation sentences, teacher
forced: the mean entropy of the attention rows (nats; every head, layer and kind), the share of
near-one-hot rows (largest weight >= 0.99), and the gradient norms of all W_Q and of all W_K
(the plain cross-entropy's, summed over those sentences); then test BLEU of the last weights.

    MHA_DATA_DIR=../shared/data/multi30k python bench/attention_scale.py   # about 15 minutes

The scaled runs are the head-count experiment's h = 4 runs (bench/heads_experiment.py, the same
--out folder): whichever script runs first trains them. Table: bench/results_attention_scale.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from fixed_runs import test_eval, train_all

from mha.data.tokenizer import Tokenizer
from mha.inference import checkpoint
from mha.inference.heads import loss_batches, summed_token_loss
from mha.inference.run import load_model
from mha.model.attention import AttentionRecorder, MultiHeadAttention
from mha.model.masks import padding_mask
from mha.model.transformer import Transformer

ONE_HOT = 0.99


def unfused_model(run: Path, weights: dict) -> Transformer:
    """The run's model in training form (W_Q, W_K as parameters), with `weights`, eval mode."""
    model, _, _ = load_model(run, "last", "cpu", fused=False)
    model.load_state_dict(weights)
    return model


def measure(model: Transformer, batches: list) -> dict:
    """Attention entropy, near-one-hot share and the W_Q / W_K gradient norms over `batches`."""
    entropy, one_hot, rows = 0.0, 0, 0
    model.zero_grad()
    for src_ids, tgt_in, tgt_out in batches:
        with AttentionRecorder(model) as weights:
            loss, _ = summed_token_loss(model, (src_ids, tgt_in, tgt_out))
        loss.backward()
        src_real = ~padding_mask(src_ids, Tokenizer.PAD)  # (B, S)
        tgt_real = tgt_in.ne(Tokenizer.PAD)  # (B, T)
        for name, w in weights.items():  # (B, H, Tq, Tk)
            queries = src_real if name.startswith("encoder") else tgt_real
            p = w.detach().transpose(1, 2)[queries]  # (rows, H, Tk): real query rows only
            entropy += float(-(p * p.clamp_min(1e-30).log()).sum(-1).sum())
            one_hot += int(p.amax(-1).ge(ONE_HOT).sum())
            rows += p.shape[0] * p.shape[1]
    norm = {kind: float(torch.stack([getattr(m, kind).weight.grad.norm() for m in attentions(model)
                                     ]).norm()) for kind in ("w_q", "w_k")}
    return {"entropy": entropy / rows, "one_hot": one_hot / rows, **norm}


def attentions(model: Transformer) -> list[MultiHeadAttention]:
    return [m for m in model.modules() if isinstance(m, MultiHeadAttention)]


def study(run: Path, limit: int) -> dict[int, dict]:
    """step -> measurements, for every snapshot the run kept."""
    steps = sorted(int(p.stem.split("_")[1]) for p in (run / "checkpoints").glob("weights_*.pt"))
    folder = run / "checkpoints"
    models = {step: unfused_model(run, checkpoint.load_weights(folder / f"weights_{step}.pt"))
              for step in steps}
    batches = loss_batches(run, "val", limit, 64, models[steps[-1]].cfg.max_tokens,
                           torch.device("cpu"))
    return {step: measure(model, batches) for step, model in models.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--limit", type=int, default=200, help="validation sentences measured")
    parser.add_argument("--out", type=Path, default=Path("runs/fixed"))
    parser.add_argument("--results", type=Path, default=Path("bench/results_attention_scale.md"))
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = {True: "h4_s{}", False: "noscale_h4_s{}"}
    runs = {names[scaled].format(s): ["model.heads=4", f"model.attention_scale={scaled}".lower(),
                                      *args.sets] for scaled in names for s in args.seeds}
    train_all(args.out, runs, args.steps, {n: int(n.rsplit("s", 1)[1]) for n in runs}, args.jobs)
    table = {}
    for scaled, pattern in names.items():
        per_seed = [study(args.out / pattern.format(s), args.limit) for s in args.seeds]
        bleus = [test_eval(args.out / pattern.format(s))["bleu"] for s in args.seeds]
        table[scaled] = per_seed, bleus
    write(args, table)


def spread(values: list[float], digits: int) -> str:
    low, high = min(values), max(values)
    return f"{statistics.mean(values):.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def write(args, table) -> None:
    steps = sorted(table[True][0][0])
    lines = [(f"1/sqrt(d_k) on and off: the `quick` setting (h 4, d_k 32) at a fixed {args.steps} "
             f"updates, seeds {', '.join(map(str, args.seeds))}: mean (min-max) over the seeds. "
             f"Measured on the first {args.limit} validation sentences, teacher forced, at the "
             "snapshot of each validation; entropy in nats over every head, layer and kind (a "
             f"uniform row over n keys has log n); one-hot: rows whose largest weight >= "
             f"{ONE_HOT}; "
             "gradient norms of the plain cross-entropy summed over those sentences. Command: "
             "`python bench/attention_scale.py`."),
             "",
             "| step | scale | attention entropy | one-hot rows | grad norm W_Q | grad norm W_K |",
             "|---|---|---|---|---|---|"]
    for step in steps:
        for scaled in (True, False):
            at = [seed[step] for seed in table[scaled][0]]
            lines.append(f"| {step} | {'1/sqrt(d_k)' if scaled else 'none'} | "
                         f"{spread([m['entropy'] for m in at], 3)} | "
                         f"{spread([100 * m['one_hot'] for m in at], 1)}% | "
                         f"{spread([m['w_q'] for m in at], 3)} | "
                         f"{spread([m['w_k'] for m in at], 3)} |")
    lines += ["", "| scale | test BLEU (greedy, last weights) | seeds |", "|---|---|---|"]
    for scaled in (True, False):
        bleus = table[scaled][1]
        lines.append(f"| {'1/sqrt(d_k)' if scaled else 'none'} | {spread(bleus, 2)} | "
                     f"{' / '.join(f'{b:.2f}' for b in bleus)} |")
    args.results.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
