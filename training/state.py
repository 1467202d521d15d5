"""What a checkpoint holds besides weights and optimiser (progress, every rank's random state),
and how a run resumes from it, checked against the config before anything is written."""

from __future__ import annotations

import dataclasses
import logging
import random
from pathlib import Path

import torch

from mha.configs.schema import Config, from_dict, to_dict
from mha.inference import checkpoint
from mha.inference.checkpoint import CheckpointError
from mha.model.transformer import Transformer
from mha.training.ema import EMA
from mha.training.optimizer import Optimizer

log = logging.getLogger(__name__)

# keys that may change between a run and its resumption: budgets and reporting, not the maths
RESUMABLE_CHANGES = {"max_steps", "max_time", "patience", "eval_every", "log_every", "num_threads",
                     "device", "average_last"}


@dataclasses.dataclass
class Progress:
    """Counters of a run; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # next batch of the epoch
    elapsed: float = 0.0  # seconds of training, validation included
    src_tokens: int = 0
    tgt_tokens: int = 0
    best_bleu: float = -1.0
    best_step: int = 0
    bad_validations: int = 0
    snapshots: list[int] = dataclasses.field(default_factory=list)  # steps kept for averaging
    validation_seconds: float = 0.0  # the part of `elapsed` spent validating
    plan_start: int = 0  # the linear schedule decays from update plan_start ...
    plan_end: int = 0  # ... to zero at plan_end (0: not planned yet)
    plan_top: float = 1.0  # ... from this factor (below 1 once corrected halfway)
    plan_corrected: bool = False  # the halfway correction is done
    precision: str = ""  # the run's number format, fixed at its start (train.precision: auto)

    def record_validation(self, bleu: float) -> bool:
        """Count a validation for train.patience; True when its BLEU is the best so far."""
        improved = bleu > self.best_bleu
        self.bad_validations = 0 if improved else self.bad_validations + 1
        if improved:
            self.best_bleu, self.best_step = bleu, self.step
        return improved


@dataclasses.dataclass
class Update:
    """What one optimiser update saw, summed over micro-batches and processes."""

    loss: float  # per target token
    tgt_tokens: int
    src_tokens: int
    slots: int  # token positions on both sides, padding included
    stop_requested: bool  # a signal reached some process


def rng_state() -> dict:
    """This process's random state: torch (CPU and CUDA) and Python's."""
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(states: list[dict], rank: int) -> None:
    """Resume process `rank` from its own saved state (one state per rank, rank 0 first).

    A format-1 checkpoint holds one state, which every rank takes; a run resumed on another
    number of processes takes state rank % N.
    """
    if rank >= len(states) > 1:
        log.warning("the checkpoint holds the random states of %d processes: rank %d takes "
                    "state %d", len(states), rank, rank % len(states))
    rng = states[rank % len(states)]
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def saved_state(last: Path, cfg: Config, resume: bool) -> dict | None:
    """last.pt's state when resuming; None for a new run. Raises CheckpointError before anything
    is written (so a refusal changes nothing) for a new run where last.pt exists, or a checkpoint
    whose config differs from `cfg` in anything but RESUMABLE_CHANGES."""
    if not resume:
        if last.exists():
            raise CheckpointError(f"{last.parents[1]} already holds a run (checkpoints/last.pt): "
                                  "pass --resume to continue it, or set another run_dir")
        return None
    state = checkpoint.load(last)
    saved, current = to_dict(from_dict(state["config"])), to_dict(cfg)
    differences = [
        f"{section}.{key} ({old!r} in the checkpoint, {current[section][key]!r} now)"
        for section in ("data", "model", "train")
        for key, old in saved[section].items()
        if current[section][key] != old and key not in RESUMABLE_CHANGES
    ]
    if differences:
        raise CheckpointError("cannot resume: the config differs from the checkpoint's at "
                              + "; ".join(differences))
    return state


def restore(state: dict, model: Transformer, optim: Optimizer, rank: int = 0,
            ema: EMA | None = None) -> Progress:
    """Load a checkpoint's training state (checked by `saved_state`) into the given objects
    and process `rank`'s random state; CheckpointError if it does not fit the model."""
    try:
        model.load_state_dict(state["model"])
        optim.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as error:
        raise CheckpointError(
            f"cannot resume: checkpoint does not fit the model ({error})"[:300]) from error
    if ema is not None:
        ema.load_state_dict(state["ema"])  # present: train.ema_decay equals the checkpoint's
    set_rng_state(state["rng"], rank)
    progress = Progress(**state["progress"])
    log.info("resuming at step %d", progress.step)
    return progress
