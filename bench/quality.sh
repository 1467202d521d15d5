#!/usr/bin/env bash
# Quality: train each Multi30k preset for its 40-minute budget (train.max_time, validation
# included), then score test_2016_flickr with `mha eval` (greedy, cased, detokenized sacreBLEU).
# Usage: bench/quality.sh [THREADS] [PRESET ...]
#   THREADS: torch threads per run (default 0: torch decides). With THREADS=1 the presets train
#   side by side, one core each; otherwise one after the other.
# Figures land in runs/<preset>/ (metrics.jsonl, curves.png, eval/) and bench/results_quality.md.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-0}; shift || true
presets=("${@:-multi30k_de_en}")
[ $# -eq 0 ] && presets=(multi30k_de_en multi30k_en_de)
export MHA_DATA_DIR=${MHA_DATA_DIR:-../shared/data/multi30k}
run() {
  mha train "$1" --set train.num_threads="$threads" > "runs/$1.train.log" 2>&1
  OMP_NUM_THREADS=$([ "$threads" = 0 ] && nproc || echo "$threads") mha eval "runs/$1" --json > "runs/$1.eval.json"
}
mkdir -p runs
if [ "$threads" = 1 ]; then
  for p in "${presets[@]}"; do run "$p" & done; wait
else
  for p in "${presets[@]}"; do run "$p"; done
fi
python - "${presets[@]}" > bench/results_quality.md <<'PY'
import json, sys
print("| preset | test BLEU | lowercased | chrF | updates | epochs | best val BLEU (step) | train minutes |")
print("|---|---|---|---|---|---|---|---|")
for preset in sys.argv[1:]:
    result = json.load(open(f"runs/{preset}.eval.json"))
    records = [json.loads(l) for l in open(f"runs/{preset}/metrics.jsonl")]
    val = [r for r in records if "val_bleu" in r]
    best = max(val, key=lambda r: r["val_bleu"])
    last = [r for r in records if "loss" in r][-1]  # the last logged update
    final = max(records, key=lambda r: (r["step"], "elapsed" in r))
    report = json.load(open(f"runs/{preset}/data/report.json"))
    tgt_per_epoch = report["splits"]["train"]["pairs"] * report["splits"]["train"]["tgt_subwords"]["mean"]
    print(f"| {preset} | {result['bleu']:.1f} | {result['bleu_lc']:.1f} | {result['chrf']:.1f} | {final['step']} | "
          f"{last['tgt_tokens'] / tgt_per_epoch:.1f} | {best['val_bleu']:.1f} ({best['step']}) | "
          f"{final['elapsed'] / 60:.1f} |")
print("\nsignatures:", result["signature"])
PY
cat bench/results_quality.md
