"""`mha info` and model/info.py: parameters and FLOPs match the model's own (torch counts the
FLOPs of a real forward), and attention costs the same for every head count."""

from __future__ import annotations

import itertools
import re
from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count
from typer.testing import CliRunner

from mha.cli.app import app
from mha.configs.schema import ModelConfig, load_config
from mha.model import MultiHeadAttention, Transformer
from mha.model.info import components

ATTENTION = ("attention W_Q", "attention W_K", "attention W_V", "attention W_O",
             "attention scores + sum")
# torch counts CPU flash attention nowhere (its GPU kernels, yes): give it torch's own formula
CPU_FLASH = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
             lambda q, k, v, *args, **kwargs: sdpa_flop_count(q, k, v)}  # shapes of Q, K, V


def counted_flops(model: Transformer, S: int, T: int) -> tuple[int, int]:
    """torch's count of one teacher-forced forward of a (1, S) source and a (1, T) target: the
    whole model's FLOPs and those inside its MultiHeadAttention modules."""
    attention = {f"{type(model).__name__}.{name}" for name, module in model.named_modules()
                 if isinstance(module, MultiHeadAttention)}
    with FlopCounterMode(display=False, custom_mapping=CPU_FLASH) as counter:  # no backward
        model.eval()(torch.randint(4, 50, (1, S)), torch.randint(4, 50, (1, T)))
    by_module = counter.get_flop_counts()
    return counter.get_total_flops(), sum(sum(by_module[name].values()) for name in attention)


def formula_flops(parts: list, S: int, T: int, names: tuple[str, ...] | None = None) -> float:
    return sum(c.src_flops * S + c.tgt_flops * T for c in parts if names is None or c.name in names)


def run_info(*args: str) -> str:
    result = CliRunner().invoke(app, ["info", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def printed_total(output: str) -> int:
    return int(re.search(r"^total +([\d,]+) ", output, re.MULTILINE)[1].replace(",", ""))


@pytest.mark.parametrize(("args", "vocab"), [
    (["tiny"], 1000),
    (["base"], 10_000),
    (["tiny", "--vocab", "321", "--set", "model.tie_embeddings=false",
      "--set", "data.joint_vocab=false", "--set", "model.positional=learned",
      "--set", "model.norm=post"], 321),
    (["tiny", "--set", "model.tie_embeddings=false", "--set", "model.heads=1"], 1000),
])
def test_printed_parameters_equal_the_models(args: list[str], vocab: int) -> None:
    output = run_info(*args)
    overrides = [value for flag, value in itertools.pairwise(args) if flag == "--set"]
    cfg = load_config(args[0], overrides)
    model = Transformer(cfg.model, vocab, vocab)
    assert printed_total(output) == sum(p.numel() for p in model.parameters())
    assert f"d_k = d_model / heads = {cfg.model.d_model // cfg.model.heads}" in output
    assert f"vocabulary {vocab:,} -> {vocab:,}" in output


def test_info_prints_components_d_k_and_training_flops() -> None:
    output = run_info("tiny", "--set", "model.heads=1", "--src-len", "20", "--tgt-len", "24")
    assert "d_k = d_model / heads = 64" in output
    for name in ("embeddings + output", *ATTENTION, "feed-forward", "layer norms"):
        assert re.search(rf"^{re.escape(name)} +[\d,]+ ", output, re.MULTILINE), name
    cfg = load_config("tiny", ["model.heads=1"])
    forward, _ = counted_flops(Transformer(cfg.model, 1000, 1000), 20, 24)
    per_token = 3 * forward / (20 + 24)  # training: forward + a backward of twice its cost
    assert f"training FLOPs per token (3 x forward): {per_token / 1e3:.3g}k" in output
    assert "source length 20 and target length 24" in output


def test_info_shows_torchs_attention_count_for_every_head_count() -> None:
    output = run_info("tiny")  # d_model 64: every h in 1..32 divides it; lengths 16 and 16
    line = re.search(r"attention FLOPs per token for h = 1, 2, 4, 8, 16, 32: (.*) - h heads",
                     output)
    printed = [float(value[:-1]) * 1e3 for value in line[1].split(", ")]  # "55.3k"
    cfg = load_config("tiny")
    for heads, shown in zip((1, 2, 4, 8, 16, 32), printed, strict=True):
        _, attention = counted_flops(Transformer(replace(cfg.model, heads=heads), 1000, 1000),
                                     16, 16)
        assert shown == pytest.approx(attention / 32, rel=5e-3), heads
    tiny = run_info("tiny", "--set", "model.d_model=48", "--set", "model.heads=3")
    assert "for h = 1, 2, 4, 8, 16: " in tiny  # only the counts that divide 48


@pytest.mark.parametrize("heads", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("options", [{}, {"norm": "post", "positional": "learned",
                                          "tie_embeddings": False, "activation": "gelu"}])
def test_components_count_what_torch_counts_in_the_model(heads: int, options: dict) -> None:
    """The whole forward and its attention, whatever the head count: the formula of `mha info`
    against torch's count of the model's own operations."""
    cfg = ModelConfig(d_model=64, heads=heads, encoder_layers=2, decoder_layers=3, d_ff=256,
                      **options)
    S, T = 12, 9
    parts = components(cfg, 50, 50, src_len=S, tgt_len=T)
    assert [c.name for c in parts if c.name in ATTENTION] == list(ATTENTION)
    total, attention = counted_flops(Transformer(cfg, 50, 50), S, T)
    assert (total, attention) == (formula_flops(parts, S, T), formula_flops(parts, S, T, ATTENTION))


@pytest.mark.parametrize("heads", [1, 2, 4, 8])
def test_attention_flop_formula_matches_torchs_count(heads: int) -> None:
    """One encoder layer's self-attention, counted by torch, against components() per source
    token: the projections and scores cost the same for every head count."""
    D, S = 64, 10
    cfg = ModelConfig(d_model=D, heads=heads, encoder_layers=1, decoder_layers=0, d_ff=4 * D)
    expected = sum(c.src_flops for c in components(cfg, 1, 1, src_len=S) if c.name in ATTENTION) * S
    attention = MultiHeadAttention(D, heads)
    x = torch.randn(1, S, D)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        attention(x, x, x, need_weights=True)  # the explicit matmuls, which torch counts
    assert counter.get_total_flops() == expected


def test_heads_that_do_not_divide_d_model_exit_2_with_one_line() -> None:
    result = CliRunner().invoke(app, ["info", "tiny", "--set", "model.heads=3"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: invalid config: model.heads (3) must divide "
                                    "model.d_model (64): d_k = d_model / heads would be 21.33")
    assert "Traceback" not in result.output


def test_missing_config_exits_2() -> None:
    result = CliRunner().invoke(app, ["info", "nope"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: config 'nope': no such file and no such preset")


def test_measure_prints_torchs_equal_count_and_a_time_for_every_head_count() -> None:
    output = run_info("tiny", "--set", "model.d_model=32", "--measure", "--src-len", "8")
    rows = re.findall(r"^\s*(\d+)\s+(\d+)\s+(\S+)\s+([\d.]+)\s+([\d.]+)$", output, re.MULTILINE)
    assert [(int(h), int(dk)) for h, dk, *_ in rows] == [(1, 32), (2, 16), (4, 8), (8, 4),
                                                         (16, 2), (32, 1)]
    D, S = 32, 8  # per token: W_Q, W_K, W_V, W_O (4 x 2 D^2) and scores + sum (2 x 2 D S)
    assert {flops for _, _, flops, *_ in rows} == {f"{(8 * D * D + 4 * D * S) / 1e3:.3g}k"}
    assert all(float(ms) > 0 for *_, ms, _ in rows)
    assert min(float(ratio) for *_, ratio in rows) == 1.0
