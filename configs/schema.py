"""Configs: YAML -> dotted overrides -> frozen dataclasses, checked by pydantic -> one error.

`load_config("multi30k_de_en", ["model.heads=8"])` reads a preset shipped beside this file (or a
YAML path), applies `--set` overrides (values parsed as YAML scalars), and checks everything at
once: every problem goes into a single `ConfigError`, one sentence each (configs/checks.py).
The defaults are the recommended preset (Multi30k de->en, 40 minutes on a 2-core CPU); each key
is documented once, in docs/config_reference.yaml, and its range is its Field constraint here.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import yaml
from pydantic import BeforeValidator, ConfigDict, Field, Strict

PRESET_DIR = Path(__file__).parent


class ConfigError(ValueError):
    """A config that cannot be used; the message lists every problem, separated by "; "."""


# PyYAML follows YAML 1.1, where 1e-3 (no dot) is a string; float fields take it as a number.
_EXPONENT_FLOAT = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _exponent_float(value: object) -> object:
    return float(value) if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value) else value


def _number_as_text(value: object) -> object:
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


# Leaf types, strict: no true for 1 or 2.0 for 2; a float takes an int (or 1e-3), text a number.
Int = Annotated[int, Strict()]
Real = Annotated[float, Strict(), BeforeValidator(_exponent_float)]
Bool = Annotated[bool, Strict()]
Text = Annotated[str, Strict(), BeforeValidator(_number_as_text)]
Switch = Annotated[Literal["auto", "true", "false"],  # YAML's true and false, read as words
                   BeforeValidator(lambda value: str(value).lower() if isinstance(value, bool)
                                   else value)]
Count = Annotated[Int, Field(ge=1)]
Whole = Annotated[Int, Field(ge=0)]
NonNegative = Annotated[Real, Field(ge=0)]
Fraction = Annotated[Real, Field(ge=0, lt=1)]
T = TypeVar("T")
Section = Annotated[T, BeforeValidator(lambda value: {} if value is None else value)]  # `model:`


def frozen(cls: type) -> type:
    """A frozen dataclass; from_dict validates it with pydantic, a direct call does not."""
    cls.__pydantic_config__ = ConfigDict(extra="forbid", allow_inf_nan=False)
    return dataclass(frozen=True)(cls)


@frozen
class Splits:
    train: Text = "train"
    val: Text = "val"
    test: Text = "test_2016_flickr"


@frozen
class DataConfig:
    corpus: Text = "multi30k"
    data_dir: Text | None = None
    src_lang: Text = "de"
    tgt_lang: Text = "en"
    splits: Section[Splits] = field(default_factory=Splits)
    vocab_size: Annotated[Int, Field(ge=6)] = 6000  # 4 special pieces, "▁", a character
    joint_vocab: Bool = True
    spm_model_type: Literal["bpe", "unigram"] = "bpe"
    spm_sample: Count = 1_000_000
    max_len: Count = 100
    byte_fallback: Bool = True  # a character the vocabulary lacks: its UTF-8 bytes, not UNK


@frozen
class ModelConfig:
    d_model: Annotated[Int, Field(ge=2)] = 128
    heads: Count = 4
    encoder_layers: Count = 4
    decoder_layers: Count = 4
    d_ff: Count = 512
    dropout: Fraction = 0.2
    attention_dropout: Fraction = 0.0
    attention_scale: Bool = True  # divide Q K^T by sqrt(d_k); false only to see why (README)
    activation: Literal["relu", "gelu"] = "relu"
    norm: Literal["pre", "post"] = "pre"
    positional: Literal["sinusoidal", "learned"] = "sinusoidal"
    max_positions: Annotated[Int, Field(ge=3)] = 256  # BOS, one subword, EOS
    tie_embeddings: Bool = True

    @property
    def max_tokens(self) -> int:
        """Most tokens of a source or an output: one position stays for BOS (or EOS)."""
        return self.max_positions - 1


@frozen
class TrainConfig:
    max_steps: Count = 20_000
    max_time: Text | None = "40m"
    batch_tokens: Annotated[Int, Field(ge=3)] = 2048  # the shortest target: BOS, a subword, EOS
    accumulate: Count = 1
    lr: Annotated[Real, Field(gt=0)] = 3e-3
    warmup_steps: Whole = 400
    schedule: Literal["inverse_sqrt", "linear"] = "linear"
    label_smoothing: Fraction = 0.1
    clip_norm: NonNegative = 1.0
    weight_decay: NonNegative = 0.0
    subword_sampling: Fraction = 0.0
    subword_sampling_tgt: Bool = True
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "auto"
    compile: Switch = "auto"  # the compiled training step (training/compiled.py)
    seed: Annotated[Int, Field(ge=0, le=2**32 - 1)] = 1  # batches seed * 100_003 + epoch
    eval_every: Count = 250
    log_every: Count = 50
    patience: Whole = 0
    average_last: Whole = 0
    ema_decay: Fraction = 0.0
    num_threads: Whole = 0
    watch: Whole = 4  # validation sentences whose attention is kept at each validation; 0: off
    device: Literal["auto", "cpu", "cuda"] = "auto"


@frozen
class DecodeConfig:
    beam: Count = 1
    length_penalty: NonNegative = 1.0
    max_len_a: NonNegative = 1.5
    max_len_b: Whole = 10
    batch_size: Count = 64
    compile: Switch = "auto"  # greedy's compiled fast path (inference/fast_decode.py)


@frozen
class Config:
    run_dir: Text = "runs/default"
    data: Section[DataConfig] = field(default_factory=DataConfig)
    model: Section[ModelConfig] = field(default_factory=ModelConfig)
    train: Section[TrainConfig] = field(default_factory=TrainConfig)
    decode: Section[DecodeConfig] = field(default_factory=DecodeConfig)


# Keys added after the first format, with what a config stored before them meant. A config that
# holds every other key was written by `dump` (a run folder's config.yaml, a checkpoint's): what
# it lacks takes these values, not today's defaults, so an old run resumes as it was trained.
# A key added from now on goes here too, with the behaviour its absence meant.
OLDER_MEANING = {"train.schedule": "inverse_sqrt", "train.ema_decay": 0.0,
                 "train.subword_sampling": 0.0, "train.subword_sampling_tgt": True,
                 "model.attention_scale": True, "train.watch": 0, "data.byte_fallback": False,
                 "decode.compile": "auto",  # compiled greedy gives eager's outputs: old runs too
                 "train.compile": "false"}


def presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(path_or_preset: str | Path, overrides: list[str] = ()) -> Config:
    """Read a YAML file or a preset name, apply `key=value` overrides, build and validate."""
    path = Path(path_or_preset)
    if not path.is_file():
        preset = PRESET_DIR / f"{path_or_preset}.yaml"
        if not preset.is_file():
            raise ConfigError(f"config {str(path_or_preset)!r}: no such file and no such "
                              f"preset (presets: {', '.join(presets())})")
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
    """Build and validate a Config from nested dicts (a YAML file's, a checkpoint's). An older
    stored format takes OLDER_MEANING for the keys it lacks; any other config, the defaults."""
    from mha.configs.checks import validate  # checks reads the dataclasses defined here

    cfg, problems = validate(_with_older_meanings(raw))
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))
    return cfg


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump(cfg: Config) -> str:
    """Every key, so a changed default never changes a stored run."""
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


def _with_older_meanings(raw: object) -> object:
    if not isinstance(raw, dict):
        return raw
    present = _keys(raw)
    if not _keys(to_dict(Config())) - OLDER_MEANING.keys() <= present:
        return raw  # not a stored config: what it leaves out takes the defaults
    raw = copy.deepcopy(raw)
    for key in OLDER_MEANING.keys() - present:
        section, name = key.split(".")
        raw[section][name] = OLDER_MEANING[key]
    return raw


def _keys(tree: dict, prefix: str = "") -> set[str]:
    """The dotted keys of nested dicts: {"model": {"heads": 4}} -> {"model.heads"}."""
    return {key for name, value in tree.items()
            for key in (_keys(value, f"{prefix}{name}.") if isinstance(value, dict)
                        else [f"{prefix}{name}"])}
