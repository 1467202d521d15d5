"""Checkpoints: written atomically, read with one clear error for every way they can be bad.

A checkpoint is a dict: format, step, config (the resolved config as a dict), tokenizer
(SentencePiece protos), model, and for training state: optimizer, rng, data, metrics, and ema
(the moving average of the weights, or None). A best.pt marked "weights": "ema" holds the
average as its model.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from mha.data.files import atomic_write

FORMAT = "mha-checkpoint-1"
REQUIRED = ("format", "step", "config", "tokenizer", "model")


class CheckpointError(Exception):
    """A run folder or checkpoint that cannot be used; the message names the file."""


def save(state: dict, path: Path) -> None:
    atomic_write(path, lambda file: torch.save({"format": FORMAT, **state}, file))


def load(path: Path) -> dict:
    """Read a checkpoint on the CPU; CheckpointError if missing, truncated, corrupt or foreign."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError,
            OSError) as error:
        text = str(error).strip()
        first_line = text.splitlines()[0] if text else type(error).__name__
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({first_line})") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an mha checkpoint (expected format {FORMAT})")
    missing = [key for key in REQUIRED if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}")
    return state


def resolve(run_dir: Path, which: str = "best") -> Path:
    """'best', 'last' or a path -> the checkpoint file, with errors that say what to do."""
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist (train one with `mha train`)")
    if which not in ("best", "last"):
        return Path(which)
    path = run_dir / "checkpoints" / f"{which}.pt"
    if not path.is_file():
        raise CheckpointError(f"run folder {run_dir} has no checkpoints/{which}.pt "
                              "(train it with `mha train`, or pass --checkpoint)")
    return path
