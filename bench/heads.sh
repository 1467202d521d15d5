#!/usr/bin/env bash
# The heads experiment: at d_model 128, do more heads translate better? Trains h = 1, 2, 4, 8 for
# the same wall-clock budget each (train.max_time, validation included). d_k = 128 / h, so every
# run has the same parameters and FLOPs per token. Each run is scored on the test split with
# `mha eval`; then the table (BLEU at equal minutes, and at equal updates: the largest step every
# run validated at) goes to bench/results_heads.md and `mha compare` draws the runs.
# Usage: bench/heads.sh             (4 x 10 minutes of training on the multi30k_de_en preset)
# Environment (all optional):
#   HEADS="1 2 4 8"  PRESET=multi30k_de_en  MINUTES=10m (any train.max_time: 90s, 10m, 1h)
#   OUT=runs/heads  RESULTS=bench/results_heads.md  SETS="key=value ..." (more --set overrides)
#   A smoke test in seconds on a folder of {split}.{lang} files:
#   PRESET=tiny MINUTES=5s OUT=/tmp/heads RESULTS=/tmp/heads/results.md \
#     SETS="data.corpus=/path/to/folder data.vocab_size=200" bench/heads.sh
# A run folder that already holds checkpoints/last.pt is kept, not retrained (delete it to redo).
# The first run's tokenizer and encoded data are copied to the others: one tokenization for all.
set -euo pipefail
cd "$(dirname "$0")/.."
read -r -a heads <<< "${HEADS:-1 2 4 8}"
preset=${PRESET:-multi30k_de_en}
budget=${MINUTES:-10m}
out=${OUT:-runs/heads}
results=${RESULTS:-bench/results_heads.md}
sets=()
for s in ${SETS:-}; do sets+=(--set "$s"); done
export MHA_DATA_DIR=${MHA_DATA_DIR:-../shared/data/multi30k}
mkdir -p "$out"
runs=()
for h in "${heads[@]}"; do
  run="$out/h$h"
  if [ -f "$run/checkpoints/last.pt" ]; then
    echo "$run: already trained, kept"
  else
    if [ ${#runs[@]} -gt 0 ] && [ ! -d "$run/data" ]; then
      mkdir -p "$run" && cp -r "${runs[0]}/tokenizer" "${runs[0]}/data" "$run/"
    fi
    echo "$run: training h=$h for $budget (log in $run.train.log)"
    mha train "$preset" --set model.heads="$h" --set train.max_time="$budget" \
      --set run_dir="$run" ${sets[@]+"${sets[@]}"} > "$run.train.log" 2>&1
  fi
  mha eval "$run" > "$run.eval.log"
  runs+=("$run")
done
mha compare "${runs[@]}" --output "$out/compare.png"
python - "$preset" "$budget" "$results" "${runs[@]}" <<'PY'
import sys
from pathlib import Path

from mha.training.compare import common_step, read_run

preset, budget, results, *folders = sys.argv[1:]
runs = [read_run(Path(folder)) for folder in folders]
step = common_step(runs)
lines = [
    f"Heads at d_model {runs[0].cfg.model.d_model}, {preset}, {budget} of training each "
    "(`bench/heads.sh`). Equal minutes: validation BLEU at the end and test BLEU of best.pt; "
    f"equal updates: validation BLEU at step {step}, the last step every run validated at.", "",
    f"| h | d_k | updates | tokens/s | val BLEU at the end | test BLEU | val BLEU at step {step} |",
    "|---|---|---|---|---|---|---|",
]
for run in runs:
    m, val, at_step = run.cfg.model, run.validations, run.bleu_at(step)
    cells = [m.heads, m.d_model // m.heads, run.updates, f"{run.tokens_per_s or 0:,.0f}",
             f"{val[-1]['val_bleu']:.2f}" if val else "-",
             f"{run.test[0]:.2f} ({run.test[1]})" if run.test else "-",
             f"{at_step:.2f}" if at_step is not None else "-"]
    lines.append("| " + " | ".join(map(str, cells)) + " |")
Path(results).write_text("\n".join(lines) + "\n", encoding="utf-8")
print("\n".join(lines))
PY
echo "table in $results; curves in $out/compare.png"
