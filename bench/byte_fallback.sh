#!/usr/bin/env bash
# Byte fallback's cost: two runs of one preset at a fixed number of updates (no time budget, so a
# busy machine changes how long they take, not what they learn), with data.byte_fallback off and
# on, each scored greedily on test_2016_flickr with `mha eval`. The table gives BLEU and chrF, the
# subwords per test sentence, seconds per update and test sentences per second, and what each run
# makes of a sentence of characters Multi30k lacks.
# Usage: bench/byte_fallback.sh                      (quick, 1,200 updates, seed 1)
#   PRESET=quick STEPS=1200 SEED=1 OUT=runs/byte_fallback bench/byte_fallback.sh
#   SETS="data.corpus=/path/to/small" adds --set's to both runs (a smoke run on a tiny corpus).
# Both runs take the same precision (PRECISION; default bf16 where the CPU has avx512_bf16, else
# fp32), so auto's timed probe cannot pick differently for the two. Run it alone on the machine:
# the runs go one after the other. The table lands in bench/results_byte_fallback.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export MHA_DATA_DIR=${MHA_DATA_DIR:-../shared/data/multi30k}
preset=${PRESET:-quick}; steps=${STEPS:-1200}; seed=${SEED:-1}; out=${OUT:-runs/byte_fallback}
precision=${PRECISION:-$(grep -q avx512_bf16 /proc/cpuinfo && echo bf16 || echo fp32)}
probe="Łukasz fährt mit 🚲 nach Zürich und grüßt Ğ ŧ 日本."
sets=(); for kv in ${SETS:-}; do sets+=(--set "$kv"); done
mkdir -p "$out"
for fallback in false true; do
  dir=$out/$preset-s$seed-bytes-$fallback
  if [ ! -f "$dir.done" ]; then
    echo "$(date +%T) train $dir"
    rm -rf "$dir"
    mha train "$preset" --set run_dir="$dir" --set data.byte_fallback=$fallback \
      --set train.max_time=null --set train.max_steps="$steps" --set train.seed="$seed" \
      --set train.precision="$precision" "${sets[@]}" > "$dir.train.log" 2>&1
    touch "$dir.done"
  fi
  mha eval "$dir" --beam 1 --json --device cpu > "$dir.greedy.json" 2> "$dir.eval.log"
  mha translate "$dir" --beam 1 --device cpu "$probe" > "$dir.probe.txt" 2>> "$dir.eval.log"
done
python - "$out" "$preset" "$seed" "$steps" "$precision" "$probe" > bench/results_byte_fallback.md <<'PY'
import json, os, sys
from pathlib import Path
from mha.data.prepare import load_prepared
from mha.training.monitor import read_metrics
out, preset, seed, steps, precision, probe = sys.argv[1:]
cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
flags = set(next(l for l in open("/proc/cpuinfo") if l.startswith("flags")).split())
native = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
print(f"CPU: {cpu}, {os.cpu_count()} cores, flags "
      f"{' '.join(native)}; preset {preset}, seed {seed}, {steps} updates, {precision}.\n")
print("| byte fallback | vocabulary (byte pieces) | test subwords src / tgt | unknown characters in "
      "test | s per update | test BLEU | chrF | test sentences/s | the probe sentence |")
print("|---|---|---|---|---|---|---|---|---|")
for fallback in ("false", "true"):
    run = Path(out) / f"{preset}-s{seed}-bytes-{fallback}"
    result = json.loads(Path(f"{run}.greedy.json").read_text())
    prepared = load_prepared(run)
    tokenizer, test = prepared.tokenizer, prepared.report["splits"]["test"]
    pieces = [tokenizer.tgt_pieces([i])[0] for i in range(tokenizer.tgt_vocab_size)]
    nbytes = sum(p.startswith("<0x") and p.endswith(">") for p in pieces)
    unknown = sum(tokenizer.unknown_characters(prepared.splits["test"]["src"]).values())
    log = [r for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    per_update = log[-1]["elapsed"] / log[-1]["step"]  # validation included, as in every run
    said = Path(f"{run}.probe.txt").read_text(encoding="utf-8").strip()
    print(f"| {fallback} | {tokenizer.tgt_vocab_size} ({nbytes}) | "
          f"{test['src_subwords']['mean']:.2f} / {test['tgt_subwords']['mean']:.2f} | {unknown} | "
          f"{per_update:.3f} | {result['bleu']:.2f} | {result['chrf']:.2f} | "
          f"{result['sentences_per_second']} | {said} |")
print(f"\nprobe: {probe}\nsignature: {result['signature']['bleu']}")
PY
cat bench/results_byte_fallback.md
