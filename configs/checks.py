"""Value checks of a config: ranges, choices and the relations between keys. Each check returns
its problems as sentences, so one ConfigError can list them all.

Every numeric key's range lives in one table, RANGES; tests/test_config_ranges.py runs a tiny
model at each end of every range, so a value the table allows also works.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from mha.configs.schema import Config, DataConfig, ModelConfig, TrainConfig, parse_duration

MULTI30K_LANGS = ("en", "de", "fr", "cs")
MULTI30K_SPLITS = ("train", "val", "test_2016_flickr")


@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric key: from low to high (None: no upper bound), ends included
    unless low_open / high_open."""

    low: float
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        if self.high is None:
            return above
        return above and (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        return (f"in {'(' if self.low_open else '['}{self.low}, "
                f"{self.high}{')' if self.high_open else ']'}")


FRACTION = Range(0, 1, high_open=True)

RANGES: dict[str, Range] = {
    # SentencePiece needs its 4 special pieces, the word boundary and at least one character
    "data.vocab_size": Range(6),
    "data.spm_sample": Range(1),
    "data.max_len": Range(1),
    "model.d_model": Range(2),
    "model.heads": Range(1),
    "model.encoder_layers": Range(1),
    "model.decoder_layers": Range(1),
    "model.d_ff": Range(1),
    "model.dropout": FRACTION,
    "model.attention_dropout": FRACTION,
    "model.max_positions": Range(3),  # BOS, one subword, EOS
    "train.max_steps": Range(1),
    "train.batch_tokens": Range(3),  # the shortest target: BOS, one subword, EOS
    "train.accumulate": Range(1),
    "train.lr": Range(0, low_open=True),
    "train.warmup_steps": Range(0),
    "train.label_smoothing": FRACTION,
    "train.clip_norm": Range(0),  # 0 disables clipping
    "train.weight_decay": Range(0),
    "train.seed": Range(0, 2**32 - 1),  # batching seeds a generator with seed * 100_003 + epoch
    "train.eval_every": Range(1),
    "train.log_every": Range(1),
    "train.patience": Range(0),
    "train.average_last": Range(0),
    "train.ema_decay": FRACTION,  # 0 disables the moving average of the weights
    "train.subword_sampling": FRACTION,  # 0 disables; BPE-dropout p or unigram alpha
    "train.num_threads": Range(0),
    "decode.beam": Range(1),
    "decode.length_penalty": Range(0),
    "decode.max_len_a": Range(0),
    "decode.max_len_b": Range(0),
    "decode.batch_size": Range(1),
}


def check(cfg: Config) -> list[str]:
    """Every value-level problem: ranges, choices, and the relations between keys."""
    out_of_range = {key: value(cfg, key) for key, allowed in RANGES.items()
                    if not allowed.holds(value(cfg, key))}
    problems = [f"{key} must be {'a finite number ' if not math.isfinite(number) else ''}"
                f"{RANGES[key]}, got {number}" for key, number in out_of_range.items()]
    return (problems + _check_data(cfg.data) + _check_model(cfg.model)
            + _check_train(cfg.train) + _check_relations(cfg, set(out_of_range)))


def value(cfg: Config, key: str) -> object:
    """cfg's value at a dotted key: value(cfg, "model.heads") is cfg.model.heads."""
    node: object = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _choices(values: dict[str, tuple[str, tuple[str, ...]]]) -> list[str]:
    return [f"{key} must be one of {', '.join(allowed)}, got {value!r}"
            for key, (value, allowed) in values.items() if value not in allowed]


def _check_data(d: DataConfig) -> list[str]:
    problems = _choices({"data.spm_model_type": (d.spm_model_type, ("bpe", "unigram"))})
    if d.src_lang == d.tgt_lang:
        problems.append(f"data.src_lang and data.tgt_lang must differ, both are {d.src_lang!r}")
    if d.corpus != "multi30k":
        return problems
    for key, lang in (("data.src_lang", d.src_lang), ("data.tgt_lang", d.tgt_lang)):
        if lang not in MULTI30K_LANGS:
            problems.append(f"{key}: unknown language {lang!r} for multi30k "
                            f"(known: {', '.join(MULTI30K_LANGS)})")
    for key, split in dataclasses.asdict(d.splits).items():
        if split not in MULTI30K_SPLITS:
            problems.append(f"data.splits.{key}: unknown split {split!r} for multi30k "
                            f"(known: {', '.join(MULTI30K_SPLITS)})")
    return problems


def _check_model(m: ModelConfig) -> list[str]:
    return _choices({
        "model.activation": (m.activation, ("relu", "gelu")),
        "model.norm": (m.norm, ("pre", "post")),
        "model.positional": (m.positional, ("sinusoidal", "learned")),
    })


def _check_train(t: TrainConfig) -> list[str]:
    problems = _choices({"train.precision": (t.precision, ("fp32", "bf16", "fp16", "auto")),
                         "train.schedule": (t.schedule, ("inverse_sqrt", "linear")),
                         "train.device": (t.device, ("auto", "cpu", "cuda"))})
    if t.max_time is not None:
        try:
            if parse_duration(t.max_time) <= 0:
                problems.append(f"train.max_time must be positive, got {t.max_time!r}")
        except ValueError as error:
            problems.append(f"train.max_time: {error}")
    return problems


def _check_relations(cfg: Config, bad: set[str]) -> list[str]:
    """Keys each in range that do not work together; a rule with a key out of range is moot."""
    data, model, train, decode = cfg.data, cfg.model, cfg.train, cfg.decode

    def fine(*keys: str) -> bool:
        return not bad & set(keys)

    problems = []
    if fine("model.heads", "model.d_model") and model.d_model % model.heads:
        problems.append(
            f"model.heads ({model.heads}) must divide model.d_model ({model.d_model}): "
            f"d_k = d_model / heads would be {model.d_model / model.heads:.4g}, not a whole number")
    if fine("model.d_model") and model.positional == "sinusoidal" and model.d_model % 2:
        problems.append(f"model.d_model ({model.d_model}) must be even with model.positional: "
                        "sinusoidal (the table pairs a sine and a cosine per frequency)")
    if fine("data.max_len", "model.max_positions") and data.max_len + 2 > model.max_positions:
        problems.append(
            f"data.max_len ({data.max_len}) + 2 must be at most model.max_positions "
            f"({model.max_positions}): the longest training target (BOS, {data.max_len} "
            "subwords, EOS) would not fit the positions: lower one or raise the other")
    if fine("data.max_len", "train.batch_tokens") and data.max_len + 2 > train.batch_tokens:
        problems.append(f"train.batch_tokens ({train.batch_tokens}) must be at least data.max_len "
                        f"({data.max_len}) + 2: the longest training target would not fit a batch")
    if fine("train.warmup_steps", "train.max_steps") and train.warmup_steps >= train.max_steps:
        problems.append(f"train.warmup_steps ({train.warmup_steps}) must be below "
                        f"train.max_steps ({train.max_steps})")
    if (fine("decode.max_len_a", "decode.max_len_b")
            and 2 * decode.max_len_a + decode.max_len_b < 1):
        problems.append(
            f"decode.max_len_a ({decode.max_len_a}) * 2 + decode.max_len_b ({decode.max_len_b}) "
            "must be at least 1, or a one-subword source (with its EOS) gets an empty translation")
    if model.tie_embeddings and not data.joint_vocab:
        problems.append("model.tie_embeddings needs data.joint_vocab: true (one shared vocabulary)")
    return problems
