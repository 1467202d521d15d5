"""Every numeric key's range (its Field constraint in configs/schema.py, read into RANGES by
configs/checks.py): just outside it a ConfigError names the key; at each end a tiny model built
from the config trains a step and decodes."""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest
import torch

from mha.configs.checks import RANGES, Range
from mha.configs.schema import Config, ConfigError, load_config
from mha.data.batching import TokenBatches, collate
from mha.data.tokenizer import Tokenizer
from mha.inference.search import Search
from mha.inference.translate import MhaEngine
from mha.model.transformer import Transformer
from mha.training.ema import EMA
from mha.training.loss import summed_loss
from mha.training.schedule import lr_factor
from mha.training.state import Progress

# A tiny model whose other keys leave room for each key's extremes.
BASE = ["model.d_model=8", "model.heads=2", "model.encoder_layers=1", "model.decoder_layers=1",
        "model.d_ff=16", "model.max_positions=32", "data.max_len=10", "data.vocab_size=16",
        "train.batch_tokens=64", "train.max_steps=100000000", "train.warmup_steps=2",
        "decode.batch_size=2"]
# A key without an upper bound is tried at this large but workable value instead.
LARGE = {
    "data.vocab_size": 32000, "data.spm_sample": 10**9, "data.max_len": 30,  # max_positions - 2
    "model.d_model": 512, "model.heads": 8, "model.encoder_layers": 6, "model.decoder_layers": 6,
    "model.d_ff": 4096, "model.max_positions": 4096, "train.max_steps": 10**9,
    "train.batch_tokens": 10**7, "train.accumulate": 1000, "train.lr": 10.0,
    "train.warmup_steps": 10**6, "train.clip_norm": 1e6, "train.weight_decay": 10.0,
    "train.eval_every": 10**6, "train.log_every": 10**6, "train.patience": 1000,
    "train.average_last": 1000, "train.num_threads": 256, "train.watch": 1000, "decode.beam": 32,
    "decode.length_penalty": 5.0, "decode.max_len_a": 100.0, "decode.max_len_b": 1000,
    "decode.batch_size": 10**4,
}
# Keys whose smallest value needs others at theirs: the relations between keys hold.
WITH_MIN = {"model.max_positions": ["data.max_len=1"], "train.batch_tokens": ["data.max_len=1"],
            "train.max_steps": ["train.warmup_steps=0"]}
STEP = 1e-3  # how far inside an open end a float is tried, and how far outside a closed one


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors: a second torch thread only spins against the first on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def value(cfg: Config, key: str) -> object:
    """cfg's value at a dotted key: value(cfg, "model.heads") is cfg.model.heads."""
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def number(key: str, x: float) -> str:
    return str(int(x)) if _is_int(key) else repr(float(x))


def _is_int(key: str) -> bool:
    section, name = key.split(".")
    return typing.get_type_hints(type(getattr(Config(), section)))[name] is int


def ends(key: str, allowed: Range) -> list[float]:
    """The smallest and largest values allowed (or LARGE's for no upper bound)."""
    inside = 1 if _is_int(key) else STEP
    low = allowed.low + inside if allowed.low_open else allowed.low
    if allowed.high is None:
        return [low, LARGE[key]]
    return [low, allowed.high - inside if allowed.high_open else allowed.high]


def outside(key: str, allowed: Range) -> list[float]:
    """Just below the range, and just above it when it has an upper bound."""
    step = 1 if _is_int(key) else STEP
    values = [allowed.low if allowed.low_open else allowed.low - step]
    if allowed.high is not None:
        values.append(allowed.high if allowed.high_open else allowed.high + step)
    return values


def test_every_numeric_key_has_a_range() -> None:
    numeric = {f"{section}.{name}"
               for section, kind in typing.get_type_hints(Config).items()
               if dataclasses.is_dataclass(kind)
               for name, field_kind in typing.get_type_hints(kind).items()
               if field_kind in (int, float)}
    assert numeric == set(RANGES)
    assert numeric <= set(LARGE) | {k for k, r in RANGES.items() if r.high is not None}


OUTSIDE = [(key, x) for key, allowed in RANGES.items() for x in outside(key, allowed)]


@pytest.mark.parametrize(("key", "x"), OUTSIDE, ids=[f"{k}={x}" for k, x in OUTSIDE])
def test_a_value_outside_the_range_names_the_key(key: str, x: float) -> None:
    with pytest.raises(ConfigError, match=rf"{key} must be .*, got {x}") as error:
        load_config("tiny", [*BASE, f"{key}={number(key, x)}"])
    assert str(error.value).count("; ") == 0, str(error.value)  # that key alone


@pytest.mark.parametrize(("text", "shown"), [(".inf", "inf"), ("-.inf", "-inf"), (".nan", "nan")])
def test_a_float_that_is_not_finite_is_refused(text: str, shown: str) -> None:
    with pytest.raises(ConfigError, match=rf"train\.lr must be a finite number > 0, got {shown}$"):
        load_config("tiny", [f"train.lr={text}"])


INSIDE = [(key, x) for key, allowed in RANGES.items() for x in ends(key, allowed)]


@pytest.mark.parametrize(("key", "x"), INSIDE, ids=[f"{k}={x}" for k, x in INSIDE])
def test_a_tiny_model_trains_and_decodes_at_each_end(key: str, x: float) -> None:
    overrides = [*BASE, *(WITH_MIN.get(key, []) if x == ends(key, RANGES[key])[0] else []),
                 f"{key}={number(key, x)}"]
    cfg = load_config("tiny", overrides)
    assert value(cfg, key) == x
    model = train_one_step(cfg)
    decode_longest(model, cfg)


def train_one_step(cfg: Config) -> Transformer:
    """One update on a batch of the longest pairs data.max_len lets through, cut by batching."""
    torch.manual_seed(cfg.train.seed)
    vocab, longest = cfg.data.vocab_size, cfg.data.max_len
    model = Transformer(cfg.model, vocab, vocab)
    src = [torch.randint(4, vocab, (longest,)).tolist() + [Tokenizer.EOS] for _ in range(3)]
    tgt = [[Tokenizer.BOS, *ids[:-1], Tokenizer.EOS] for ids in src]
    batches = TokenBatches([len(s) for s in src], [len(t) for t in tgt], cfg.train.batch_tokens,
                           cfg.train.seed).epoch(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr,
                                 weight_decay=cfg.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.train, Progress()))
    ema = EMA.attach(model, optimizer, cfg.train.ema_decay)
    for schedule in ("inverse_sqrt", "linear"):  # both, over the whole run
        settings = dataclasses.replace(cfg.train, schedule=schedule)
        for step in (0, 1, settings.warmup_steps, settings.max_steps):
            assert 0 <= lr_factor(step, settings, Progress()) <= 1, (schedule, step)
    model.train()
    for indices in batches:
        batch = collate([src[i] for i in indices], [tgt[i] for i in indices])
        loss = summed_loss(model, batch.src_ids, batch.tgt_in, batch.tgt_out,
                           cfg.train.label_smoothing)
        assert math.isfinite(loss.item())
        loss.backward()
    if cfg.train.clip_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_norm)
    optimizer.step()
    scheduler.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert ema is None or all(torch.isfinite(p).all() for p in ema.model.parameters())
    return model.eval()


def decode_longest(model: Transformer, cfg: Config) -> None:
    """Greedy (and beam, when decode.beam > 1) on sources as long as training's."""
    sources = [[5] * cfg.data.max_len + [Tokenizer.EOS], [4, Tokenizer.EOS]]
    for beam in sorted({1, cfg.decode.beam}):
        for start in range(0, len(sources), cfg.decode.batch_size):
            outputs = MhaEngine(model, None, cfg.decode).decode(
                sources[start:start + cfg.decode.batch_size], Search(beam=beam))
            assert all(len(h[0].ids) <= cfg.model.max_tokens for h in outputs)


def test_odd_d_model_needs_learned_positions() -> None:
    cfg = load_config("tiny", [*BASE, "model.d_model=7", "model.heads=1",
                               "model.positional=learned"])
    decode_longest(train_one_step(cfg), cfg)
    sinusoidal = dataclasses.replace(cfg.model, positional="sinusoidal")
    with pytest.raises(RuntimeError):  # what the config check spares the user
        Transformer(sinusoidal, 16, 16)
