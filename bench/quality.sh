#!/usr/bin/env bash
# Quality: train each preset for its budget (train.max_time, validation included), score
# test_2016_flickr greedily with `mha eval` (cased and lowercased, detokenized sacreBLEU), choose
# beam and length penalty on val with `mha tune-decode`, then score test with beam 5 and the
# length penalty chosen on val.
# Usage: bench/quality.sh [PRESET[:SEED] ...]   (default: multi30k_de_en:1 multi30k_de_en:2 multi30k_en_de:1)
# A variant: SETS="model.dropout=0.2" TAG=d02 bench/quality.sh multi30k_de_en:1 (runs <preset>_s<seed>_d02)
# Run it alone on the machine: the runs go one after the other, with every core.
# Figures land in runs/quality/<preset>_s<seed>/ and bench/results_quality.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export MHA_DATA_DIR=${MHA_DATA_DIR:-../shared/data/multi30k}
runs=("${@:-multi30k_de_en:1}")
[ $# -eq 0 ] && runs=(multi30k_de_en:1 multi30k_de_en:2 multi30k_en_de:1)
mkdir -p runs/quality
names=()
for spec in "${runs[@]}"; do
  preset=${spec%%:*}; seed=${spec#*:}; [ "$seed" = "$spec" ] && seed=1
  name=${preset}_s${seed}${TAG:+_$TAG}; dir=runs/quality/$name; names+=("$name")
  echo "$(date +%T) train $name"
  sets=(); for kv in ${SETS:-}; do sets+=(--set "$kv"); done
  mha train "$preset" --set run_dir="$dir" --set train.seed="$seed" "${sets[@]}" > "$dir.train.log" 2>&1
  mha eval "$dir" --beam 1 --json > "$dir.greedy.json"
  mha tune-decode "$dir" --beams 1,5 --penalties 0.6,1.0,1.4 > "$dir.tune.log" 2>&1
  mha eval "$dir" --beam 5 --json > "$dir.beam.json"   # with the penalty chosen on val
done
python - "${names[@]}" > bench/results_quality.md <<'PY'
import json, platform, subprocess, sys
import yaml
from pathlib import Path
from mha.inference import checkpoint
cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
flags = set(next(l for l in open("/proc/cpuinfo") if l.startswith("flags")).split())
native = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
print(f"CPU: {cpu}, {subprocess.check_output(['nproc']).decode().strip()} cores, flags {' '.join(native)}\n")
print("| run | dropout | precision | greedy BLEU | lowercased | chrF | val's choice | beam BLEU | lowercased "
      "| updates | epochs | best val BLEU (step) | train minutes |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for name in sys.argv[1:]:
    d = f"runs/quality/{name}"
    greedy, beam = (json.load(open(f"{d}.{kind}.json")) for kind in ("greedy", "beam"))
    decode = yaml.safe_load(open(f"{d}/decode.yaml"))
    dropout = yaml.safe_load(open(f"{d}/config.yaml"))["model"]["dropout"]
    precision = checkpoint.load(Path(d, "checkpoints", "last.pt"))["progress"]["precision"] or "fp32"
    records = [json.loads(l) for l in open(f"{d}/metrics.jsonl")]
    val = [r for r in records if "val_bleu" in r]
    best = max(val, key=lambda r: r["val_bleu"])
    last = [r for r in records if "loss" in r][-1]  # the last logged update
    final = max(records, key=lambda r: (r["step"], "elapsed" in r))
    report = json.load(open(f"{d}/data/report.json"))
    train = report["splits"]["train"]
    epochs = last["tgt_tokens"] / (train["pairs"] * train["tgt_subwords"]["mean"])
    print(f"| {name} | {dropout} | {precision} | {greedy['bleu']:.1f} | {greedy['bleu_lc']:.1f} | {greedy['chrf']:.1f} "
          f"| beam {decode['beam']}, penalty {decode['length_penalty']} | {beam['bleu']:.1f} | {beam['bleu_lc']:.1f} "
          f"| {final['step']} | {epochs:.1f} | {best['val_bleu']:.1f} ({best['step']}) "
          f"| {final['elapsed'] / 60:.1f} |")
print("\nsignatures:", ", ".join(greedy["signature"].values()))
PY
cat bench/results_quality.md
