#!/usr/bin/env bash
# The README's two-step fine-tuning example, at fixed updates (a busy machine changes the time,
# not the result): a general model on the first 24,000 pairs of Multi30k de-en train (`quick`,
# 1,200 updates), then "your own domain", pairs 24,001-28,000 of train written out as a local
# folder (the general model never saw them), fine-tuned from it with --init-from for 300 updates
# at two peak rates (3e-3, the preset's, and 3e-4);
# BLEU and chrF on the domain's 500 held-out lines (pairs 28,501-29,000) before and after, and on
# test2016 (what the general skill keeps). The table lands in bench/results_finetune.md.
# Usage: bench/finetune.sh     (OUT=runs/finetune; STEPS=1200 TUNE_STEPS=300)
set -euo pipefail
cd "$(dirname "$0")/.."
export MHA_DATA_DIR=${MHA_DATA_DIR:-../shared/data/multi30k}
out=${OUT:-runs/finetune}; steps=${STEPS:-1200}; tune=${TUNE_STEPS:-300}
general=$out/general_data; domain=$out/domain_data
mkdir -p "$general" "$domain"
for l in de en; do
  zcat "$MHA_DATA_DIR/train.$l.gz" | sed -n 1,24000p > "$general/train.$l"  # not head: pipefail
  zcat "$MHA_DATA_DIR/val.$l.gz" > "$general/val.$l"
  zcat "$MHA_DATA_DIR/test_2016_flickr.$l.gz" > "$general/test_2016_flickr.$l"
  zcat "$MHA_DATA_DIR/train.$l.gz" | sed -n 24001,28000p > "$domain/train.$l"
  zcat "$MHA_DATA_DIR/train.$l.gz" | sed -n 28001,28500p > "$domain/val.$l"
  zcat "$MHA_DATA_DIR/train.$l.gz" | sed -n 28501,29000p > "$domain/test_2016_flickr.$l"
done
fixed=(--set train.max_time=null --set train.num_threads=1)
[ -f "$out/general/checkpoints/last.pt" ] || mha train quick --set run_dir="$out/general" \
  --set data.corpus="$general" --set train.max_steps="$steps" "${fixed[@]}" > "$out/general.log" 2>&1
for lr in 3e-3 3e-4; do  # the preset's peak rate, and a tenth of it
  [ -f "$out/tuned_lr$lr/checkpoints/last.pt" ] || mha train quick --set run_dir="$out/tuned_lr$lr" \
    --set data.corpus="$domain" --set train.max_steps="$tune" --set train.warmup_steps=30 \
    --set train.lr="$lr" --set train.eval_every=100 "${fixed[@]}" --init-from "$out/general" \
    > "$out/tuned_lr$lr.log" 2>&1
done
score() { mha eval "$1" --json --device cpu "${@:2}" 2>/dev/null | tail -1; }
{
  echo "General: \`quick\` on Multi30k de-en train pairs 1-24,000, $steps updates; tuned: --init-from it, $tune updates on pairs 24,001-28,000 (local files), at the preset's peak rate 3e-3 and at 3e-4. Greedy test BLEU / chrF. Command: \`bash bench/finetune.sh\`."
  echo
  echo "| model | domain's 500 held-out lines: BLEU | chrF | test2016: BLEU | chrF |"
  echo "|---|---|---|---|---|"
  for run in general tuned_lr3e-3 tuned_lr3e-4; do
    d=$(score "$out/$run" --src-file "$domain/test_2016_flickr.de" --ref-file "$domain/test_2016_flickr.en" --output "$out/$run.domain.hyp")
    t=$(score "$out/$run" --src-file "$general/test_2016_flickr.de" --ref-file "$general/test_2016_flickr.en" --output "$out/$run.test.hyp")
    python -c "import json,sys; d,t=map(json.loads,sys.argv[2:]); print(f'| {sys.argv[1]} | {d[\"bleu\"]:.2f} | {d[\"chrf\"]:.2f} | {t[\"bleu\"]:.2f} | {t[\"chrf\"]:.2f} |')" "$run" "$d" "$t"
  done
} > bench/results_finetune.md
cat bench/results_finetune.md
