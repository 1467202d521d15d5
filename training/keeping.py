"""Which checkpoints a run keeps: last.pt after every validation (and after a signal), best.pt
when the validation BLEU improves, and with train.average_last the weights of the last N
validations, for averaging; a snapshot that falls out goes only once last.pt no longer lists it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from mha.inference import checkpoint
from mha.model.transformer import Transformer
from mha.training.state import Progress

TRAINING_FILES = ("config.yaml", "metrics.jsonl", "curves.png", "provenance.json")  # in run_dir


class Keeper:
    """The checkpoint files of one run folder; `state()` is what a checkpoint holds now."""

    def __init__(self, run_dir: Path, average_last: int, state: Callable[[], dict]) -> None:
        self.run_dir, self.folder = run_dir, run_dir / "checkpoints"
        self.last, self.best = self.folder / "last.pt", self.folder / "best.pt"
        self.average_last, self.state = average_last, state

    def remove_leftovers(self) -> None:
        """Rank 0, before anything writes: the leftovers of training's own files' killed writes."""
        checkpoint.remove_leftovers(self.run_dir, TRAINING_FILES)
        checkpoint.remove_leftovers(self.folder)

    def save(self, path: Path, **extra) -> None:
        checkpoint.save({**self.state(), **extra}, path)

    def keep(self, model: Transformer, progress: Progress, improved: bool, best: dict) -> None:
        """After a validation: a snapshot for averaging, best.pt (the state and `best`) when the
        BLEU improved, then last.pt."""
        dropped = self._snapshot(model, progress) if self.average_last else []
        if improved:  # before last.pt: a kill between the two repeats this validation on resume
            self.save(self.best, **best)
        self.save(self.last)
        for path in dropped:  # last.pt no longer lists them
            path.unlink(missing_ok=True)

    def _snapshot(self, model: Transformer, progress: Progress) -> list[Path]:
        """Save this validation's weights; returns the files that fell out of the last N."""
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        checkpoint.save_weights(weights, self.folder / f"weights_{progress.step}.pt")
        progress.snapshots.append(progress.step)
        dropped = [self.folder / f"weights_{old}.pt"
                   for old in progress.snapshots[:-self.average_last]]
        progress.snapshots = progress.snapshots[-self.average_last:]
        return dropped


def averaged_snapshots(run_dir: Path, steps: list[int], device: torch.device) -> dict:
    """The element-wise mean of the kept snapshots' weights."""
    folder = run_dir / "checkpoints"
    snapshots = [checkpoint.load_weights(folder / f"weights_{s}.pt") for s in steps]
    return {k: sum(s[k].float() for s in snapshots).div(len(snapshots)).to(v.dtype).to(device)
            for k, v in snapshots[0].items()}
