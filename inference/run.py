"""Load a trained model from a run folder for translation: checkpoint -> (model, tokenizer, config).

The checkpoint alone rebuilds the model: it carries the resolved config and the tokenizer's
SentencePiece protos. When the run folder also holds config.yaml and tokenizer/, they must agree
with the checkpoint, so a checkpoint copied into the wrong run is refused, not quietly used.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from mha.configs.schema import Config, ConfigError, from_dict, load_config, to_dict
from mha.data.files import DataError
from mha.data.tokenizer import Tokenizer
from mha.inference import checkpoint
from mha.inference.checkpoint import CheckpointError
from mha.inference.tune import apply_tuned
from mha.model.fused import fuse_projections
from mha.model.transformer import Transformer

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")


def pick_device(name: str, cuda: bool | None = None) -> torch.device:
    """'auto' (cuda when available), 'cpu' or 'cuda': the one device choice of mha, for training,
    its own decoder and CTranslate2. `cuda` says whether CUDA is there (default: torch's answer;
    CTranslate2 passes its own). Raises ConfigError for an unknown name or cuda without CUDA."""
    if name not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if name == "auto":
        return torch.device("cuda" if cuda else "cpu")
    if name == "cuda" and not cuda:
        raise ConfigError("device cuda was asked for, but CUDA is not available on this machine "
                          "(use --device cpu or auto)")
    return torch.device(name)


def load_model(
    run_dir: Path, which: str = "best", device: str = "cpu", *, fused: bool = True,
) -> tuple[Transformer, Tokenizer, Config]:
    """Rebuild the model of `run_dir` from checkpoint `which` (best, last or a path), in eval mode
    with its projections fused for decoding (mha.model.fused: the model is not for training);
    `fused=False` keeps the readable model, whose W_Q, W_K, W_V get gradients.

    The returned config's decode section carries RUN/decode.yaml's tuned beam and length penalty
    when the run has that file (see inference/tune.py).

    Raises CheckpointError for a missing run folder or checkpoint, a truncated or corrupt file,
    a checkpoint that disagrees with the run's config.yaml or tokenizer/, or weights that do not
    fit the model; ConfigError for an unusable device or decode.yaml.
    """
    run_dir = Path(run_dir)
    target = pick_device(device)
    path, state, cfg, tokenizer = read_checkpoint(run_dir, which)
    cfg = apply_tuned(cfg, run_dir, state["step"])  # RUN/decode.yaml, from `mha tune-decode`
    try:
        model = Transformer(cfg.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size,
                            pad_id=Tokenizer.PAD)
    except ValueError as error:
        raise CheckpointError(f"checkpoint {path}: {error}") from error
    _load_weights(model, state["model"], path)
    log.debug("loaded %s (step %s) on %s", path, state["step"], target)
    model = model.to(target).eval()
    return fuse_projections(model) if fused else model, tokenizer, cfg


def read_checkpoint(run_dir: Path, which: str = "best") -> tuple[Path, dict, Config, Tokenizer]:
    """Checkpoint `which` (best, last or a path) of `run_dir`: its path, its state, its config
    and its tokenizer, checked against the run folder's config.yaml and tokenizer/.

    Raises CheckpointError as `load_model` does.
    """
    path = checkpoint.resolve(Path(run_dir), which)
    state = checkpoint.load(path)
    try:
        cfg = from_dict(state["config"])
    except ConfigError as error:
        raise CheckpointError(f"checkpoint {path} holds an unusable config: {error}") from error
    tokenizer = _tokenizer(state["tokenizer"], path)
    _check_run_agrees(Path(run_dir), path, cfg, tokenizer)
    return path, state, cfg, tokenizer


def _tokenizer(state: object, path: Path) -> Tokenizer:
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path}: tokenizer state is not a dict")
    try:
        return Tokenizer.from_state(state)
    except DataError as error:
        raise CheckpointError(f"checkpoint {path}: {error}") from error
    except RuntimeError as error:  # SentencePiece refuses a damaged model proto
        raise CheckpointError(
            f"checkpoint {path}: its tokenizer does not load ({error})") from error


def _check_run_agrees(run_dir: Path, path: Path, cfg: Config, tokenizer: Tokenizer) -> None:
    """The run folder's config.yaml (model section) and tokenizer/ must match the checkpoint."""
    config_file = run_dir / "config.yaml"
    if config_file.is_file():
        run_model = to_dict(load_config(config_file))["model"]
        ckpt_model = to_dict(cfg)["model"]
        differ = sorted(k for k in ckpt_model if ckpt_model[k] != run_model.get(k))
        if differ:
            details = ", ".join(f"model.{k} {ckpt_model[k]!r} vs {run_model.get(k)!r}"
                                for k in differ)
            raise CheckpointError(f"checkpoint {path} does not match {config_file}: {details}")
    tokenizer_dir = run_dir / "tokenizer"
    if tokenizer_dir.is_dir() and _run_tokenizer(tokenizer_dir) != tokenizer:
        raise CheckpointError(f"checkpoint {path} has a different vocabulary from "
                              f"{tokenizer_dir} (was it trained in another run?)")


def _run_tokenizer(folder: Path) -> Tokenizer:
    try:
        return Tokenizer.load(folder)
    except RuntimeError as error:  # SentencePiece refuses a damaged model file
        raise CheckpointError(f"the run's tokenizer in {folder} does not load ({error})") from error


def _load_weights(model: Transformer, weights: object, path: Path) -> None:
    if not isinstance(weights, dict):
        raise CheckpointError(f"checkpoint {path}: model weights are not a state_dict")
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = " ".join(lines[1:]) or lines[0]
        detail = detail if len(detail) <= 300 else detail[:300] + "..."
        raise CheckpointError(f"checkpoint {path}: weights do not fit the model "
                              f"({detail})") from error
