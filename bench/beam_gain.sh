#!/usr/bin/env bash
# Beam gain: for a trained run, greedy against beam search with the length penalty tuned on the
# val split (`mha tune-decode`), scored on the test split, cased and lowercased.
# Usage: bench/beam_gain.sh RUN [BEAM] [PENALTIES]
#   BEAM: the beam size compared with greedy (default 5); PENALTIES: the length penalties tried
#   on val (default 0.6,0.8,1.0,1.2,1.4). Writes RUN/decode.yaml (the tuned choice),
#   RUN/eval/*.hyp, and the table to bench/results_beam_gain.md.
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:?usage: bench/beam_gain.sh RUN [BEAM] [PENALTIES]}
beam=${2:-5}
penalties=${3:-0.6,0.8,1.0,1.2,1.4}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
mha tune-decode "$run" --beams "1,$beam" --penalties "$penalties" > "$out/tune.txt"
mha eval "$run" --beam 1 --json > "$out/greedy.json"
mha eval "$run" --beam "$beam" --json > "$out/beam.json"  # decode.yaml's tuned penalty
python - "$run" "$beam" "$out" > bench/results_beam_gain.md <<'PY'
import json, sys
import yaml
run, beam, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
tuned = yaml.safe_load(open(f"{run}/decode.yaml"))
greedy, search = (json.load(open(f"{out}/{name}.json")) for name in ("greedy", "beam"))
print(f"Run {run}, test split ({greedy['sentences']} sentences); length penalty tuned on val "
      f"by `mha tune-decode` (checkpoint {tuned['checkpoint']}, step {tuned['step']}).\n")
print("| decoding | length penalty | test BLEU | test BLEU, lowercased | chrF | sentences/s |")
print("|---|---|---|---|---|---|")
for name, result, penalty in (("greedy", greedy, "-"),
                              (f"beam {beam}", search, f"{tuned['length_penalty']:g}")):
    print(f"| {name} | {penalty} | {result['bleu']:.2f} | {result['bleu_lc']:.2f} | "
          f"{result['chrf']:.2f} | {result['sentences_per_second']} |")
print(f"\nbeam {beam} minus greedy: {search['bleu'] - greedy['bleu']:+.2f} BLEU cased, "
      f"{search['bleu_lc'] - greedy['bleu_lc']:+.2f} lowercased\n")
print("Val BLEU (cased) by beam and length penalty, from `mha tune-decode`:\n")
print(open(f"{out}/tune.txt").read().split(":\n", 1)[1].strip())
print(f"\nsignatures: {greedy['signature']['bleu']}; {greedy['signature']['bleu_lc']}")
PY
cat bench/results_beam_gain.md
