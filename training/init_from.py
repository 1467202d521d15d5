"""Starting a run from another run's weights: `mha train CONFIG --init-from RUN[:CHECKPOINT]`, to
fine-tune a model on new data (JoeyNMT's load_model, OpenNMT-py's -train_from).

Only the weights and the tokenizer come from RUN: the new run encodes its own corpus with RUN's
tokenizer, and its optimiser, schedule, data order and counters start fresh. The config must
describe the same network and vocabulary, or the weights and ids would not fit: every `model` key
(dropout aside, which no weight depends on) and the tokenizer's settings must equal RUN's, and a
config that differs is refused with one line naming each key. The new run records where it
started, in its provenance.json and in every checkpoint ("init_from").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from mha.configs.schema import Config, ConfigError, ModelConfig
from mha.data.tokenizer import Tokenizer
from mha.inference.checkpoint import CheckpointError
from mha.inference.run import read_checkpoint
from mha.model.transformer import Transformer

TOKENIZER_KEYS = ("vocab_size", "joint_vocab", "spm_model_type", "byte_fallback")
FREE_MODEL_KEYS = ("dropout", "attention_dropout")  # regularisation: no weight depends on them


@dataclass(frozen=True)
class Source:
    """What a new run takes from RUN: its weights and tokenizer, and where they come from."""

    run: Path
    checkpoint: Path
    step: int
    tokenizer: Tokenizer
    weights: dict[str, Tensor]

    def record(self) -> dict:
        """Where the run started, for provenance.json and the checkpoints."""
        return {"run": str(self.run.resolve()), "checkpoint": str(self.checkpoint.resolve()),
                "step": self.step}


def parse_spec(spec: str) -> tuple[Path, str]:
    """RUN, RUN:best, RUN:last, RUN:PATH or a checkpoint file -> (run folder, checkpoint)."""
    path = Path(spec)
    if path.is_file():  # RUN/checkpoints/X.pt belongs to RUN, whose files it must agree with
        return (path.parents[1] if path.parent.name == "checkpoints" else path.parent), spec
    if path.exists() or ":" not in spec:
        return path, "best"
    run, _, which = spec.rpartition(":")
    return Path(run), which or "best"


def load_source(spec: str, cfg: Config) -> Source:
    """RUN's weights and tokenizer, when `cfg` describes RUN's network and vocabulary.

    Raises CheckpointError for a missing or unusable run or checkpoint, ConfigError (one line,
    every differing key with both values) for a config that does not fit RUN's weights.
    """
    run, which = parse_spec(spec)
    path, state, source_cfg, tokenizer = read_checkpoint(run, which)
    differ = differences(source_cfg, cfg)
    if differ:
        raise ConfigError(f"--init-from {spec}: the config differs from the run's at "
                          f"{'; '.join(differ)}: its weights and token ids would not fit (set "
                          "these keys as the run has them)")
    if not isinstance(state["model"], dict):
        raise CheckpointError(f"checkpoint {path}: model weights are not a state_dict")
    return Source(run, path, int(state["step"]), tokenizer, state["model"])


def differences(source: Config, cfg: Config) -> list[str]:
    """'key (RUN's value in the run, the config's here)' for each key that must be equal."""
    keys = [("model", field.name) for field in dataclasses.fields(ModelConfig)
            if field.name not in FREE_MODEL_KEYS] + [("data", key) for key in TOKENIZER_KEYS]
    return [f"{section}.{key} ({theirs!r} in the run, {ours!r} here)"
            for section, key in keys
            if (theirs := getattr(getattr(source, section), key))
            != (ours := getattr(getattr(cfg, section), key))]


def load_weights(model: Transformer, source: Source) -> None:
    """RUN's weights into the new run's model; CheckpointError if they do not fit."""
    try:
        model.load_state_dict(source.weights)
    except RuntimeError as error:
        detail = " ".join(line.strip() for line in str(error).splitlines()[1:])[:300]
        raise CheckpointError(f"--init-from {source.checkpoint}: the weights do not fit the "
                              f"model ({detail})") from error
