"""Checkpoints: written atomically, read with one clear error for every way they can be bad.

A checkpoint is data, never code: it is read with `torch.load(weights_only=True)`, whose
unpickler builds only tensors, containers and plain values, so a file that names any other
Python object (an os.system call hidden in a shared run folder) is refused before anything runs.
We chose this over safetensors + JSON because the format stays one file with the same names
(best.pt, last.pt), old checkpoints (formats 1 and 2) load unchanged, and optimizer and RNG
states, which are nested dicts of tensors and ints, need no second serialiser.

A checkpoint is a dict: format, step, config (the resolved config as a dict), tokenizer
(SentencePiece protos), model, and for training state: optimizer, scheduler, scaler, progress,
rng (a list: one state per process, rank 0 first; format 1 held one state, for every rank) and
ema (the moving average of the weights, or None). A best.pt marked "weights": "ema" holds the
average as its model.
"""

from __future__ import annotations

import errno
import logging
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch

from mha.data.files import atomic_write

FORMAT = "mha-checkpoint-2"
READABLE = ("mha-checkpoint-1", FORMAT)
REQUIRED = ("format", "step", "config", "tokenizer", "model")

log = logging.getLogger(__name__)


class CheckpointError(Exception):
    """A run folder or checkpoint that cannot be used; the message names the file."""


def save(state: dict, path: Path) -> None:
    """Write `state` atomically; CheckpointError (the previous file kept) if its weights hold NaN
    or inf, or the write fails (a full disk)."""
    refuse_non_finite(state["model"], path)
    write(path, lambda file: torch.save({"format": FORMAT, **state}, file))


def save_weights(weights: dict[str, torch.Tensor], path: Path) -> None:
    """A bare state dict (the snapshots kept for averaging), with `save`'s guarantees."""
    refuse_non_finite(weights, path)
    write(path, lambda file: torch.save(weights, file))


def refuse_non_finite(weights: dict[str, torch.Tensor], path: Path) -> None:
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"refusing to write {path}: {name} holds NaN or inf "
                                  "(the previous file is kept)")


def write(path: Path, write_to: Callable[[BinaryIO], object]) -> None:
    """atomic_write, with an OSError (a full disk, a read-only folder) as a CheckpointError."""
    try:
        atomic_write(path, write_to)
    except OSError as error:
        cause = error.strerror or errno.errorcode.get(error.errno or 0) or str(error)
        raise CheckpointError(f"cannot write {path}: {cause} (the previous file is kept)"
                              ) from error


def remove_leftovers(folder: Path, names: tuple[str, ...] = ("*",)) -> list[Path]:
    """Delete the temporary files (`.NAME.*.tmp`) that a killed atomic_write of one of `names`
    (glob patterns) left in `folder`.

    Only the process that holds the run folder's lock may call this, and only for the files it
    alone writes: the result files that other commands add (explore.html, decode.yaml) keep
    their writes in progress.
    """
    leftovers = sorted({leftover for name in names for leftover in folder.glob(f".{name}.*.tmp")}
                       ) if folder.is_dir() else []
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
        log.info("removed %s, left by an interrupted write", leftover)
    return leftovers


def load(path: Path) -> dict:
    """Read a checkpoint on the CPU; CheckpointError if missing, truncated, corrupt or foreign."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    state = load_data(path)
    if not isinstance(state, dict) or state.get("format") not in READABLE:
        raise CheckpointError(f"{path} is not an mha checkpoint (expected format "
                              f"{' or '.join(READABLE)})")
    missing = [key for key in REQUIRED if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}")
    if state["format"] == "mha-checkpoint-1" and isinstance(state.get("rng"), dict):
        state["rng"] = [state["rng"]]  # one state, which every rank resumes from
    return state


def load_data(path: Path) -> object:
    """torch.load with weights_only=True: tensors, containers and plain values, nothing that
    runs. CheckpointError naming the file and the object it asked for, or the damage found."""
    with path.open("rb") as file:  # torch.save writes zip archives; unpickling other bytes
        starts_as_zip = file.read(4) == b"PK\x03\x04"  # can raise anything, MemoryError too
    if not starts_as_zip:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt (it does not start "
                              "as the zip archive torch.save writes)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"WeightsUnpickler error: (?:Unsupported global: GLOBAL )?(.+?)"
                          r"(?: was not an allowed global.*)?$", str(error), re.MULTILINE)
        if found:
            raise CheckpointError(
                f"refusing {path}: it holds {found.group(1)}, which is not data (a checkpoint "
                "holds only tensors, numbers, strings and containers); nothing in it was run"
            ) from error
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({error})") from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError,
            MemoryError) as error:
        text = str(error).strip()
        first_line = text.splitlines()[0] if text else type(error).__name__
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({first_line})") from error


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A bare state dict saved by `save_weights` (an averaging snapshot), by `load`'s rules."""
    if not path.is_file():
        raise CheckpointError(f"no weights file at {path}")
    weights = load_data(path)
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor)
                                                for v in weights.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors")
    return weights


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
