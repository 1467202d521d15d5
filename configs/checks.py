"""Value checks of a config: sizes, ranges, choices and the relations between keys. Each check
returns its problems as sentences, so one ConfigError can list them all."""

from __future__ import annotations

import dataclasses

from mha.configs.schema import (
    Config,
    DataConfig,
    DecodeConfig,
    ModelConfig,
    TrainConfig,
    parse_duration,
)

MULTI30K_LANGS = ("en", "de", "fr", "cs")
MULTI30K_SPLITS = ("train", "val", "test_2016_flickr")


def check(cfg: Config) -> list[str]:
    """Every value-level problem: sizes, ranges, choices, and the relations between keys."""
    return (_check_data(cfg.data) + _check_model(cfg.model) + _check_train(cfg.train)
            + _check_decode(cfg.decode) + _check_relations(cfg))


def _positive(values: dict[str, float]) -> list[str]:
    return [f"{k} must be positive, got {v}" for k, v in values.items() if v <= 0]


def _non_negative(values: dict[str, float]) -> list[str]:
    return [f"{k} must be >= 0, got {v}" for k, v in values.items() if v < 0]


def _fraction(values: dict[str, float]) -> list[str]:
    return [f"{k} must be in [0, 1), got {v}" for k, v in values.items() if not 0 <= v < 1]


def _choices(values: dict[str, tuple[str, tuple[str, ...]]]) -> list[str]:
    return [f"{key} must be one of {', '.join(allowed)}, got {value!r}"
            for key, (value, allowed) in values.items() if value not in allowed]


def _check_data(d: DataConfig) -> list[str]:
    problems = _positive({"data.vocab_size": d.vocab_size, "data.max_len": d.max_len,
                          "data.spm_sample": d.spm_sample})
    problems += _choices({"data.spm_model_type": (d.spm_model_type, ("bpe", "unigram"))})
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
    problems = _positive({
        "model.d_model": m.d_model, "model.heads": m.heads,
        "model.encoder_layers": m.encoder_layers, "model.decoder_layers": m.decoder_layers,
        "model.d_ff": m.d_ff, "model.max_positions": m.max_positions,
    })
    problems += _fraction({"model.dropout": m.dropout,
                           "model.attention_dropout": m.attention_dropout})
    if m.heads > 0 and m.d_model > 0 and m.d_model % m.heads:
        problems.append(
            f"model.heads ({m.heads}) must divide model.d_model ({m.d_model}): "
            f"d_k = d_model / heads would be {m.d_model / m.heads:.4g}, not a whole number"
        )
    return problems + _choices({
        "model.activation": (m.activation, ("relu", "gelu")),
        "model.norm": (m.norm, ("pre", "post")),
        "model.positional": (m.positional, ("sinusoidal", "learned")),
    })


def _check_train(t: TrainConfig) -> list[str]:
    problems = _positive({
        "train.max_steps": t.max_steps, "train.batch_tokens": t.batch_tokens,
        "train.accumulate": t.accumulate, "train.lr": t.lr, "train.eval_every": t.eval_every,
        "train.log_every": t.log_every,
    })
    problems += _non_negative({
        "train.warmup_steps": t.warmup_steps, "train.clip_norm": t.clip_norm,
        "train.patience": t.patience, "train.average_last": t.average_last,
        "train.num_threads": t.num_threads, "train.weight_decay": t.weight_decay,
    })
    problems += _fraction({"train.label_smoothing": t.label_smoothing})
    if t.warmup_steps >= t.max_steps > 0:
        problems.append(
            f"train.warmup_steps ({t.warmup_steps}) must be below train.max_steps ({t.max_steps})"
        )
    problems += _choices({"train.precision": (t.precision, ("fp32", "bf16", "fp16")),
                          "train.schedule": (t.schedule, ("inverse_sqrt", "linear")),
                          "train.device": (t.device, ("auto", "cpu", "cuda"))})
    if t.max_time is not None:
        try:
            if parse_duration(t.max_time) <= 0:
                problems.append(f"train.max_time must be positive, got {t.max_time!r}")
        except ValueError as error:
            problems.append(f"train.max_time: {error}")
    return problems


def _check_decode(dec: DecodeConfig) -> list[str]:
    return (_positive({"decode.beam": dec.beam, "decode.batch_size": dec.batch_size})
            + _non_negative({"decode.max_len_a": dec.max_len_a, "decode.max_len_b": dec.max_len_b}))


def _check_relations(cfg: Config) -> list[str]:
    if cfg.model.tie_embeddings and not cfg.data.joint_vocab:
        return ["model.tie_embeddings needs data.joint_vocab: true (one shared vocabulary)"]
    return []
