"""A config checked in words: each pydantic error as one sentence, then what pydantic cannot
check alone (corpus languages and splits, durations, keys that must agree). RANGES reads each
key's range from its Field constraint (tests/test_config_ranges.py tries both ends of each)."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import typing
from dataclasses import dataclass

from annotated_types import Ge, Gt, Le, Lt
from pydantic import TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from mha.configs.schema import Config, DataConfig, TrainConfig, parse_duration

MULTI30K_LANGS = ("en", "de", "fr", "cs")
MULTI30K_SPLITS = ("train", "val", "test_2016_flickr")
BYTE_FALLBACK_VOCAB = 4 + 256 + 2  # specials, bytes, "▁" and one character


@dataclass(frozen=True)
class Range:
    """From low to high (None: no upper bound), ends included unless low_open / high_open."""

    low: float
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        return (f"in {'(' if self.low_open else '['}{self.low}, "
                f"{self.high}{')' if self.high_open else ']'}")


def _range(declared: typing.Any) -> Range | None:
    """The Field constraint of a declared type as a Range, or None for a type without one."""
    bounds = {type(m).__name__: getattr(m, type(m).__name__.lower())
              for m in FieldInfo.from_annotation(declared).metadata
              if isinstance(m, (Ge, Gt, Le, Lt))}
    if not bounds:
        return None
    return Range(low=bounds.get("Ge", bounds.get("Gt")), high=bounds.get("Le", bounds.get("Lt")),
                 low_open="Gt" in bounds, high_open="Lt" in bounds)


RANGES: dict[str, Range] = {
    f"{section}.{name}": allowed
    for section, kind in typing.get_type_hints(Config).items() if dataclasses.is_dataclass(kind)
    for name, declared in typing.get_type_hints(kind, include_extras=True).items()
    if (allowed := _range(declared))
}
_ADAPTER = TypeAdapter(Config)


def validate(raw: object) -> tuple[Config, list[str]]:
    """`raw` as a Config, and every problem found. A value in error is left out (its default
    stands in) so the other checks still run; checks involving it are skipped."""
    problems, bad = [], set()
    while True:
        try:
            cfg = _ADAPTER.validate_python(raw)
            break
        except ValidationError as error:
            details = error.errors()
            problems += [_sentence(detail) for detail in details]
            bad |= {".".join(map(str, detail["loc"])) for detail in details}
            raw = _without(raw, [detail["loc"] for detail in details])
    return cfg, (problems + _check_data(cfg.data, bad) + _check_train(cfg.train, bad)
                 + _check_relations(cfg, bad))


def _hint(loc: tuple) -> typing.Any:
    """The type declared at a key's path: ("model", "heads") -> int."""
    kind: typing.Any = Config
    for part in loc:
        kind = typing.get_type_hints(kind)[part]
    return kind


def _sentence(error: ErrorDetails) -> str:
    """One pydantic error as the sentence the user reads, key first."""
    loc, kind, got = error["loc"], error["type"], error["input"]
    key = ".".join(map(str, loc))
    if kind in ("unexpected_keyword_argument", "invalid_key"):  # invalid: not a string
        prefix = "".join(f"{part}." for part in loc[:-1])
        names = [f.name for f in dataclasses.fields(_hint(loc[:-1]))]
        close = difflib.get_close_matches(str(loc[-1]), names, n=1)
        hint = f"did you mean {prefix}{close[0]}?" if close else f"valid: {', '.join(names)}"
        return f"unknown key {key} ({hint})"
    if kind == "dataclass_type":
        return f"{key or 'config'}: expected a mapping, got {got!r}"
    declared = _hint(loc)
    if kind == "literal_error":
        allowed = [str(a).lower() if isinstance(a, bool) else a for a in typing.get_args(declared)]
        return f"{key} must be one of {', '.join(allowed)}, got {got!r}"
    if key in RANGES and not kind.endswith("_type"):  # out of range, or not finite
        finite = "a finite number " if kind == "finite_number" else ""
        shown = float(got) if declared is float else got
        return f"{key} must be {finite}{RANGES[key]}, got {shown}"
    if kind.endswith("_type"):
        names = ["null" if o is type(None) else o.__name__
                 for o in typing.get_args(declared) or (declared,)]
        return f"{key}: expected {' or '.join(names)}, got {got!r}"
    return f"{key}: {error['msg']}"


def _without(raw: object, locs: list[tuple]) -> dict:
    """A copy of `raw` without the values at `locs` (a `raw` that is no mapping: empty)."""
    raw = copy.deepcopy(raw) if isinstance(raw, dict) else {}
    for *path, last in filter(None, locs):
        functools.reduce(dict.__getitem__, path, raw).pop(last, None)
    return raw


def _check_data(d: DataConfig, bad: set[str]) -> list[str]:
    problems = []
    if d.corpus != "multi30k":
        return problems
    for key, lang in (("data.src_lang", d.src_lang), ("data.tgt_lang", d.tgt_lang)):
        if key not in bad and lang not in MULTI30K_LANGS:
            problems.append(f"{key}: unknown language {lang!r} for multi30k "
                            f"(known: {', '.join(MULTI30K_LANGS)})")
    for key, split in dataclasses.asdict(d.splits).items():
        if f"data.splits.{key}" not in bad and split not in MULTI30K_SPLITS:
            problems.append(f"data.splits.{key}: unknown split {split!r} for multi30k "
                            f"(known: {', '.join(MULTI30K_SPLITS)})")
    return problems


def _check_train(t: TrainConfig, bad: set[str]) -> list[str]:
    if t.max_time is None or "train.max_time" in bad:
        return []
    try:
        if parse_duration(t.max_time) <= 0:
            return [f"train.max_time must be positive, got {t.max_time!r}"]
    except ValueError as error:
        return [f"train.max_time: {error}"]
    return []


def _check_relations(cfg: Config, bad: set[str]) -> list[str]:
    """Keys each valid alone that do not work together; a rule with a key in error is moot."""
    data, model, train, decode = cfg.data, cfg.model, cfg.train, cfg.decode
    rules = [  # (keys, broken, message)
        (("model.heads", "model.d_model"), model.d_model % model.heads,
         (f"model.heads ({model.heads}) must divide model.d_model ({model.d_model}): "
          f"d_k = d_model / heads would be {model.d_model / model.heads:.4g}, not a whole number")),
        (("model.d_model", "model.positional"),
         model.positional == "sinusoidal" and model.d_model % 2,
         (f"model.d_model ({model.d_model}) must be even with model.positional: "
          "sinusoidal (the table pairs a sine and a cosine per frequency)")),
        (("data.max_len", "model.max_positions"), data.max_len + 2 > model.max_positions,
         (f"data.max_len ({data.max_len}) + 2 must be at most model.max_positions "
          f"({model.max_positions}): the longest training target (BOS, {data.max_len} "
          "subwords, EOS) would not fit the positions: lower one or raise the other")),
        (("data.max_len", "train.batch_tokens"), data.max_len + 2 > train.batch_tokens,
         (f"train.batch_tokens ({train.batch_tokens}) must be at least data.max_len "
          f"({data.max_len}) + 2: the longest training target would not fit a batch")),
        (("train.warmup_steps", "train.max_steps"), train.warmup_steps >= train.max_steps,
         (f"train.warmup_steps ({train.warmup_steps}) must be below "
          f"train.max_steps ({train.max_steps})")),
        (("decode.max_len_a", "decode.max_len_b"), 2 * decode.max_len_a + decode.max_len_b < 1,
         (f"decode.max_len_a ({decode.max_len_a}) * 2 + decode.max_len_b ({decode.max_len_b}) "
          "must be at least 1, or a one-subword source (with its EOS) gets an empty translation")),
        (("model.tie_embeddings", "data.joint_vocab"),
         model.tie_embeddings and not data.joint_vocab,
         "model.tie_embeddings needs data.joint_vocab: true (one shared vocabulary)"),
        (("data.byte_fallback", "data.vocab_size"),
         data.byte_fallback and data.vocab_size < BYTE_FALLBACK_VOCAB,
         (f"data.vocab_size ({data.vocab_size}) must be at least {BYTE_FALLBACK_VOCAB} with "
          "data.byte_fallback: true (4 special pieces, 256 byte pieces, \"▁\" and a "
          "character), or set data.byte_fallback: false")),
        (("data.src_lang", "data.tgt_lang"), data.src_lang == data.tgt_lang,
         f"data.src_lang and data.tgt_lang must differ, both are {data.src_lang!r}"),
    ]
    return [message for keys, broken, message in rules if broken and bad.isdisjoint(keys)]
