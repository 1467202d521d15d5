"""The attention history's files: what `train.watch` writes and `mha explore` reads.

In RUN/attention_history/ (training/watch.py writes them, each atomically):
    sentences.json   src (S pieces, EOS last), tgt_in (T pieces: BOS, reference), tgt_out (T)
    step_0000150.pt  {"step", "weights": [per sentence {name: uint8 (H, Tq, Tk)}]}
names as AttentionRecorder gives them ("encoder.0.self_attn", "decoder.1.cross_attn", ...), each
weight w kept as round(w * LEVELS): a weight in [0, 1] to within 1/510. Reading lives here, in
inference/, so that the explore page (and any other reader) need not import training/.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

FOLDER = "attention_history"
LEVELS = 255  # uint8


def read_history(run_dir: Path) -> tuple[list[dict], dict[int, list[dict]]]:
    """The watched sentences and step -> per sentence {name: weights (H, Tq, Tk) in [0, 1]}."""
    folder = Path(run_dir) / FOLDER
    sentences = json.loads((folder / "sentences.json").read_text(encoding="utf-8"))
    history = {}
    for path in sorted(folder.glob("step_*.pt")):
        state = torch.load(path, weights_only=True)
        history[state["step"]] = [{name: w.float() / LEVELS for name, w in sentence.items()}
                                  for sentence in state["weights"]]
    return sentences, history
