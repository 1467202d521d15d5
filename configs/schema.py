"""Configs: YAML -> dotted overrides -> frozen dataclasses -> one validation.

`load_config("multi30k_de_en", ["model.heads=8"])` reads a preset shipped beside this file (or a
YAML path), applies `--set` overrides (values parsed as YAML scalars), and checks everything at
once: every problem found goes into a single `ConfigError`, one line each.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PRESET_DIR = Path(__file__).parent


class ConfigError(ValueError):
    """A config that cannot be used; the message lists every problem, separated by "; "."""


# PyYAML follows YAML 1.1, where 1e-3 (no dot) is a string; float fields take it as a number.
_EXPONENT_FLOAT = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+")


@dataclass(frozen=True)
class Splits:
    train: str = "train"  # split names as the corpus calls them
    val: str = "val"
    test: str = "test_2016_flickr"


@dataclass(frozen=True)
class DataConfig:
    corpus: str = "multi30k"  # multi30k, a local folder of {split}.{lang}[.gz], or hub:NAME
    data_dir: str | None = None  # where Multi30k files are looked up first (or $MHA_DATA_DIR)
    src_lang: str = "de"
    tgt_lang: str = "en"
    splits: Splits = field(default_factory=Splits)
    vocab_size: int = 8000
    joint_vocab: bool = True  # one SentencePiece model for both sides, or one per side
    spm_model_type: str = "bpe"  # bpe or unigram
    spm_sample: int = 1_000_000  # sentences SentencePiece trains on, at most
    max_len: int = 100  # training pairs longer than this (subwords, either side) are dropped


@dataclass(frozen=True)
class ModelConfig:
    d_model: int = 256
    heads: int = 4  # d_k = d_v = d_model / heads
    encoder_layers: int = 3
    decoder_layers: int = 3
    d_ff: int = 1024
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation: str = "relu"  # relu or gelu
    norm: str = "pre"  # pre or post (the paper's)
    positional: str = "sinusoidal"  # sinusoidal or learned
    max_positions: int = 256
    tie_embeddings: bool = True  # needs data.joint_vocab

    @property
    def max_tokens(self) -> int:
        """Most tokens of a source or an output: one position stays for BOS (or EOS)."""
        return self.max_positions - 1


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = 10_000
    max_time: str | None = None  # wall-clock budget: "40m", "2h", "90s"
    batch_tokens: int = 4096  # tokens per batch and side, padding included
    accumulate: int = 1  # batches per optimiser update
    lr: float = 7e-4  # peak learning rate, reached after warmup
    warmup_steps: int = 1000
    schedule: str = "inverse_sqrt"  # or linear: to zero when max_time (or max_steps) ends
    label_smoothing: float = 0.1
    clip_norm: float = 1.0  # 0 disables clipping
    weight_decay: float = 0.0
    subword_sampling: float = 0.0  # training batches: BPE-dropout p or unigram alpha; 0 off
    subword_sampling_tgt: bool = True  # sample the target side too, not just the source
    precision: str = "fp32"  # fp32, bf16, auto (bf16 if native and faster), fp16 (CUDA)
    seed: int = 1
    eval_every: int = 500
    log_every: int = 50
    patience: int = 0  # validations without a better BLEU before stopping; 0 disables
    average_last: int = 0  # average the weights of the last N validation checkpoints; 0 disables
    ema_decay: float = 0.0  # validate and keep an exponential moving average of the weights; 0 off
    num_threads: int = 0  # torch threads on CPU; 0 lets torch decide
    device: str = "auto"  # auto, cpu or cuda


@dataclass(frozen=True)
class DecodeConfig:
    beam: int = 1  # 1 is greedy
    length_penalty: float = 1.0
    max_len_a: float = 1.5  # output length limit: a * source length + b
    max_len_b: int = 10
    batch_size: int = 64


@dataclass(frozen=True)
class Config:
    run_dir: str = "runs/default"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    @property
    def d_k(self) -> int:
        return self.model.d_model // self.model.heads


def presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(path_or_preset: str | Path, overrides: list[str] = ()) -> Config:
    """Read a YAML file or a preset name, apply `key=value` overrides, build and validate."""
    path = Path(path_or_preset)
    if not path.is_file():
        preset = PRESET_DIR / f"{path_or_preset}.yaml"
        if not preset.is_file():
            raise ConfigError(
                f"config {str(path_or_preset)!r}: no such file and no such preset "
                f"(presets: {', '.join(presets())})"
            )
        path = preset
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid YAML: {error}".replace("\n", " ")) from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top, "
                          f"got {type(raw).__name__}")
    for item in overrides:
        _apply_override(raw, item)
    return from_dict(raw)


def from_dict(raw: dict) -> Config:
    """Build a Config from nested dicts (as stored in checkpoints), validating everything."""
    from mha.configs.checks import check  # checks reads the dataclasses defined here

    problems: list[str] = []
    cfg = _build(Config, raw, "", problems)  # a bad value falls back to its default here
    problems += check(cfg)
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))
    return cfg


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def parse_duration(text: str) -> float:
    """'40m' -> 2400.0 seconds; accepts s, m, h and plain seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not match:
        raise ValueError(f"expected a duration like '40m', '2h' or '90s', got {text!r}")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]


def _apply_override(raw: dict, item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. model.heads=8")
    node = raw
    *parents, leaf = key.strip().split(".")
    for part in parents:
        if node.get(part) is None:  # absent, or an empty section (`model:` with nothing below)
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"--set {item!r}: {part!r} is not a section")
    try:
        node[leaf] = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        node[leaf] = value


def _build(cls: type, raw: Any, prefix: str, problems: list[str]) -> Any:
    """Turn a dict into dataclass `cls`, recording unknown keys and wrong types in problems."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in raw.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = (f" (did you mean {prefix}{close[0]}?)" if close
                    else f" (valid: {', '.join(names)})")
            problems.append(f"unknown key {prefix}{key}{hint}")
            continue
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            values[key] = _build(kind, value, f"{prefix}{key}.", problems)
        else:
            ok, converted = _coerce(value, kind)
            if ok:
                values[key] = converted
            else:
                problems.append(f"{prefix}{key}: expected {_type_name(kind)}, got {value!r}")
    return cls(**values)


def _coerce(value: Any, kind: Any) -> tuple[bool, Any]:
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    if value is None:
        return type(None) in options, None
    for option in options:
        if option is bool and isinstance(value, bool):
            return True, value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return True, value
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if option is float and isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value):
            return True, float(value)
        if option is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return True, str(value)
    return False, None


def _type_name(kind: Any) -> str:
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    return " or ".join("null" if o is type(None) else o.__name__ for o in options)
