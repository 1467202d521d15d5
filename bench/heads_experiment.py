"""The head-count experiment (Vaswani et al. 2017, Table 3, rows (A)) on Multi30k de-en, so that
it means something: h in {1, 2, 4, 8, 16, 32} at d_model 128 (d_k from 128 down to 4, the same
parameters and FLOPs for every h), each the `quick` preset at a fixed 1,200 updates, three seeds.

For each h: test BLEU (greedy, sacreBLEU, the weights after the last update) per seed, mean and
spread; validation loss at the last update; the pruning result of one seed (`mha heads` on the
first `--prune-limit` validation sentences: how many heads can go before val BLEU drops by 0.5 and
by 1.0). Then sacreBLEU's paired bootstrap test (1,000 resamples) between the best h and h = 1,
seed by seed. Writes the table to bench/results_heads.md and the picture to docs/heads_count.png.

    MHA_DATA_DIR=../shared/data/multi30k python bench/heads_experiment.py     # about 2 hours
    python bench/heads_experiment.py --heads 1 2 --seeds 1 2 --steps 20 --prune-limit 20 \
      --set train.warmup_steps=5 --set train.eval_every=10 --out /tmp/h \
      --results /tmp/h/results.md --picture /tmp/h/heads.png       # a smoke test

Runs live in --out (default runs/fixed, shared with bench/attention_scale.py); a finished run is
kept, a stopped one resumes, so the script can be run again after an interruption.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from sacrebleu.metrics import BLEU
from sacrebleu.significance import PairedTest

from mha.inference.evaluate import eval_set

sys.path.insert(0, str(Path(__file__).parent))
from fixed_runs import test_eval, train_all, validations


def name(h: int, seed: int) -> str:
    return f"h{h}_s{seed}"


def prune(run: Path, limit: int) -> dict:
    if not (run / "heads.json").exists():
        subprocess.run(["mha", "heads", str(run), "--checkpoint", "last", "--limit", str(limit)],
                       check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads((run / "heads.json").read_text())


def bootstrap(out: Path, best: int, seeds: list[int]) -> list[str]:
    """Paired bootstrap (1,000 resamples) of h=best against h=1 on each seed's test outputs."""
    _, references, _ = eval_set(out / name(1, seeds[0]), "test", None, None)
    lines = []
    for seed in seeds:
        hyps = {h: (out / name(h, seed) / "eval" / "test.last.hyp").read_text().splitlines()
                for h in (1, best)}
        systems = [("h=1", hyps[1]), (f"h={best}", hyps[best])]
        _, scores = PairedTest(systems, {"BLEU": BLEU()}, [references], test_type="bs",
                               n_samples=1000)()
        result = scores["BLEU"][1]
        lines.append(f"seed {seed}: h={best} {result.score:.2f} against h=1 "
                     f"{scores['BLEU'][0].score:.2f}, p = {result.p_value:.4f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at once, 1 thread each")
    parser.add_argument("--prune-limit", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("runs/fixed"))
    parser.add_argument("--results", type=Path, default=Path("bench/results_heads.md"))
    parser.add_argument("--picture", type=Path, default=Path("docs/heads_count.png"))
    parser.add_argument("--set", dest="sets", action="append", default=[],
                        help="more key=value overrides for every run (e.g. a smoke test's data)")
    args = parser.parse_args()
    runs = {name(h, s): [f"model.heads={h}", *args.sets] for h in args.heads for s in args.seeds}
    seed_of = {name(h, s): s for h in args.heads for s in args.seeds}
    train_all(args.out, runs, args.steps, seed_of, args.jobs)
    rows, curves = [], {}
    for h in args.heads:
        tests = [test_eval(args.out / name(h, s)) for s in args.seeds]
        losses = [validations(args.out / name(h, s))[-1]["val_loss"] for s in args.seeds]
        heads = prune(args.out / name(h, args.seeds[0]), args.prune_limit)
        curves[h] = heads
        bleus = [t["bleu"] for t in tests]
        rows.append((h, bleus, losses, heads))
    best = max(rows, key=lambda r: statistics.mean(r[1]))[0]
    significance = bootstrap(args.out, best, args.seeds) if best != 1 and 1 in args.heads else []
    write_table(args, rows, best, significance)
    draw(args, rows, curves)


def write_table(args, rows, best: int, significance: list[str]) -> None:
    spread = "max - min" if len(args.seeds) > 1 else "-"
    lines = [
        f"Heads at d_model 128: the `quick` preset (3+3 layers, vocab 4,000, dropout 0) at a fixed "
        f"{args.steps} updates each (`train.max_time=null train.max_steps={args.steps}`), seeds "
        f"{', '.join(map(str, args.seeds))}; test2016 greedy BLEU of the weights after the last "
        "update. Pruning: `mha heads --checkpoint last` on the first "
        f"{args.prune_limit} validation sentences of seed {args.seeds[0]}'s run. "
        "Command: `python bench/heads_experiment.py`"
        + (f" `--set {' --set '.join(args.sets)}`." if args.sets else "."), "",
        "| h | d_k | test BLEU mean | spread (" + spread + ") | seeds' test BLEU | val loss mean "
        "| heads | can go before -0.5 BLEU | before -1.0 | Spearman (ablation, gradient) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for h, bleus, losses, heads in rows:
        go = heads["can_remove"]
        rho = heads.get("spearman")
        lines.append(
            f"| {h} | {128 // h} | {statistics.mean(bleus):.2f} | {max(bleus) - min(bleus):.2f} | "
            f"{' / '.join(f'{b:.2f}' for b in bleus)} | {statistics.mean(losses):.3f} | "
            f"{len(heads['heads'])} | {go['0.5']} | {go['1.0']} | "
            f"{'-' if rho is None else f'{rho:.2f}'} |")
    lines += ["", (f"Best mean: h = {best}. Paired bootstrap (sacreBLEU, 1,000 resamples) of "
                   f"h = {best} against h = 1 on the same seed:"), ""]
    lines += [f"- {line}" for line in significance] or ["- (not run: h = 1 is the best or absent)"]
    args.results.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


def draw(args, rows, curves) -> None:
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    hs = [r[0] for r in rows]
    for h, bleus, _, _ in rows:
        left.scatter([h] * len(bleus), bleus, color="tab:blue", alpha=0.6, s=18)
    left.plot(hs, [statistics.mean(r[1]) for r in rows], color="tab:blue", marker="o",
              label="mean of the seeds")
    left.set(xscale="log", xticks=hs, xticklabels=map(str, hs), xlabel="heads h (d_k = 128 / h)",
             ylabel="test BLEU (greedy)", title=f"{args.steps} updates, seeds "
             f"{', '.join(map(str, args.seeds))}")
    left.legend()
    for h, heads in curves.items():
        total = len(heads["heads"])
        kept = [step["kept"] / total for step in heads["pruning"]]
        right.plot(kept, [step["bleu"] for step in heads["pruning"]], label=f"h = {h}")
    right.set(xlabel="share of heads kept (least important removed first)",
              ylabel=f"val BLEU (first {args.prune_limit} sentences)",
              title=f"pruning, seed {args.seeds[0]}")
    right.invert_xaxis()
    right.legend()
    figure.tight_layout()
    args.picture.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.picture, dpi=110)
    print(f"picture: {args.picture}")


if __name__ == "__main__":
    main()
