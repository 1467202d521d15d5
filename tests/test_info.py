"""`mha info` and model/info.py: parameter counts match the model, FLOPs do not depend on heads."""

from __future__ import annotations

import itertools
import re
from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from mha.cli.app import app
from mha.configs.schema import ModelConfig, load_config
from mha.model import MultiHeadAttention, Transformer
from mha.model.info import components, training_flops

ATTENTION = ("attention W_Q", "attention W_K", "attention W_V", "attention W_O",
             "attention scores + sum")


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
    output = run_info("base", "--src-len", "20", "--tgt-len", "24")
    assert "d_k = d_model / heads = 64" in output
    for name in ("embeddings + output", *ATTENTION, "feed-forward", "layer norms"):
        assert re.search(rf"^{re.escape(name)} +[\d,]+ ", output, re.MULTILINE), name
    cfg = load_config("base")
    per_token = training_flops(cfg.model, 10_000, 10_000, 20, 24, 20, 24) / (20 + 24)
    assert f"training FLOPs per token (3 x forward): {per_token / 1e6:.3g}M" in output
    assert "source length 20 and target length 24" in output


def test_info_shows_attention_flops_equal_for_every_head_count() -> None:
    output = run_info("base")  # d_model 512: every h in 1..32 divides it
    line = re.search(r"attention FLOPs per token for h = 1, 2, 4, 8, 16, 32: (.*) - h heads",
                     output)
    values = line[1].split(", ")
    assert len(values) == 6 and len(set(values)) == 1, values
    tiny = run_info("tiny", "--set", "model.d_model=48", "--set", "model.heads=3")
    assert "for h = 1, 2, 4, 8, 16: " in tiny  # only the counts that divide 48


@pytest.mark.parametrize("d_model", [64, 512])
def test_attention_flops_do_not_depend_on_heads(d_model: int) -> None:
    base = ModelConfig(d_model=d_model, heads=1, encoder_layers=2, decoder_layers=3,
                       d_ff=4 * d_model)
    counts = {}
    for heads in (1, 2, 4, 8, 16, 32):
        parts = components(replace(base, heads=heads), 500, 500, src_len=12, tgt_len=9)
        counts[heads] = [(c.params, c.src_flops, c.tgt_flops) for c in parts if c.name in ATTENTION]
        assert len(counts[heads]) == len(ATTENTION)
    assert all(value == counts[1] for value in counts.values())


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
