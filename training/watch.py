"""Attention as it forms: a few fixed validation sentences' attention, kept at every validation.

With `train.watch` N (0: off), the validation split's first N sentence pairs are forced along
their references after each validation (one sentence at a time, so no padding) and every weight
of every head of the three kinds is kept, 8-bit, in RUN/attention_history/: the files and their
reading (`read_history`) are described in inference/history.py.
A resumed run first removes the steps after its checkpoint, so the history has neither gaps nor
duplicates; each file is written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mha.data.files import atomic_write
from mha.data.prepare import Prepared
from mha.inference import checkpoint
from mha.inference.history import FOLDER, LEVELS
from mha.model.attention import AttentionRecorder
from mha.model.transformer import Transformer


class Watch:
    """Records the watched sentences' attention into run_dir/attention_history."""

    def __init__(self, run_dir: Path, prepared: Prepared, count: int, max_tokens: int,
                 resumed_step: int) -> None:
        self.folder = Path(run_dir) / FOLDER
        rows = prepared.splits["val"].select(range(min(count, len(prepared.splits["val"]))))
        self.pairs = [(src[:max_tokens], tgt[:max_tokens + 1])  # as validation cuts them
                      for src, tgt in zip(rows["src_ids"], rows["tgt_ids"])]
        tokenizer = prepared.tokenizer
        sentences = [{"src": tokenizer.src_pieces(text)[:len(src)],
                      "tgt_in": tokenizer.tgt_pieces(tgt[:-1]),
                      "tgt_out": tokenizer.tgt_pieces(tgt[1:])}
                     for text, (src, tgt) in zip(rows["src"], self.pairs)]
        checkpoint.remove_leftovers(self.folder)  # of a killed write
        text = json.dumps(sentences, ensure_ascii=False).encode("utf-8")
        atomic_write(self.folder / "sentences.json", lambda file: file.write(text))
        for path in self.folder.glob("step_*.pt"):  # recorded after the checkpoint resumed from
            if int(path.stem[5:]) > resumed_step:
                path.unlink()

    @torch.no_grad()
    def record(self, model: Transformer, step: int) -> None:
        training, device = model.training, next(model.parameters()).device
        model.eval()
        kept = []
        for src, tgt in self.pairs:
            with AttentionRecorder(model) as weights:
                model(torch.tensor([src], device=device), torch.tensor([tgt[:-1]], device=device))
            kept.append({name: w[0].float().mul(LEVELS).round().to(torch.uint8).cpu()
                         for name, w in weights.items()})  # (H, Tq, Tk) each
        model.train(training)
        checkpoint.write(self.folder / f"step_{step:07d}.pt",
                         lambda file: torch.save({"step": step, "weights": kept}, file))
