"""`--quantization int8` (inference/quantize.py): torchao's dynamic int8 keeps mha's numbers within
the int8 rounding steps, on the session's tiny run.

The bound of one int8 matmul: with the weight row w stored as s_w * round(w / s_w) (s_w its
largest |w| / 127) and the input token x as s_x * round(x / s_x) (s_x its largest |x| / 127),
each factor moves by at most half its step, so an output moves by at most
    sum_i |x_i| s_w / 2 + s_x / 2 sum_i |w_i| + K s_w s_x / 4    (K inputs).
Every quantized matmul must keep to it. For the whole model the logits are held to the output
layer's own bound (at the float model's decoder states): the earlier layers' rounding errors,
of either sign, largely cancel, and the test shows they stay within that one layer's worst
case. Greedy outputs then equal float32's wherever the top-2 logit margin exceeds the two
tokens' bounds together: only a closer pair can swap.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import SENTENCES, assert_user_error, invoke, optional
from torch.nn.utils.rnn import pad_sequence

from mha.configs.schema import ConfigError
from mha.inference.quantize import INSTALL, check_quantization, quantize_int8
from mha.inference.translate import encode_sources
from mha.model.decode import greedy
from mha.model.fused import FusedAttention

pytestmark = pytest.mark.usefixtures("_one_thread")  # one torch thread: the cores are shared
BOS, EOS = 2, 3


@pytest.fixture(scope="module")
def models(loaded):
    """(float32 model, its int8 copy, tokenizer): the tiny run as `mha translate` loads it."""
    optional("torchao")
    model, tokenizer, _ = loaded
    return model, quantize_int8(copy.deepcopy(model)), tokenizer


def bound(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The largest move of F.linear(x, weight) (..., N) when both are rounded to int8 steps."""
    s_w = weight.abs().amax(dim=1) / 127  # (N,) a step per output row
    s_x = x.abs().amax(dim=-1, keepdim=True) / 127  # (..., 1) a step per token
    return (x.abs() @ weight.new_ones(weight.shape).T * s_w / 2
            + s_x / 2 * weight.abs().sum(dim=1) + weight.shape[1] * s_x * s_w / 4)


@torch.no_grad()
def test_every_matmul_is_int8_and_within_its_rounding_bound(models):
    model, int8, _ = models
    quantized = {name: module for name, module in int8.named_modules()
                 if hasattr(getattr(module, "weight", None), "qdata")}
    expected = [name for name, module in model.named_modules()
                if isinstance(module, (torch.nn.Linear, FusedAttention))]
    assert sorted(quantized) == sorted(expected) and "output" in quantized
    assert not hasattr(int8.tgt_embed.weight, "qdata")  # embeddings stay float
    x = torch.randn(2, 5, model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    for name, module in quantized.items():
        weight = model.get_submodule(name).weight
        inputs = x if weight.shape[1] == x.shape[-1] else torch.relu(x @ torch.randn(
            x.shape[-1], weight.shape[1], generator=torch.Generator().manual_seed(1)))
        ours, exact = F.linear(inputs, module.weight), F.linear(inputs, weight)
        assert ((ours - exact).abs() <= bound(inputs, weight) * (1 + 1e-4) + 1e-6).all(), name


@torch.no_grad()
def test_int8_logits_stay_within_the_output_layers_rounding_bound(models):
    model, int8, tokenizer = models
    src_ids = torch.tensor(tokenizer.encode_src(SENTENCES[:1]))  # (1, S)
    tgt_in = torch.tensor([[BOS, *greedy(model, src_ids, bos=BOS, eos=EOS)[0].ids]])  # (1, T)
    states = model.decode(tgt_in, model.encode(src_ids, None), None)  # (1, T, D)
    difference = (int8(src_ids, tgt_in) - model(src_ids, tgt_in)).abs()  # (1, T, V)
    assert (difference <= bound(states, model.output.weight)).all()
    assert difference.max() > 0  # int8 did change something


@torch.no_grad()
def test_int8_greedy_equals_float32_where_the_top2_margin_exceeds_the_bounds(
        models, small_corpus: Path):
    model, int8, tokenizer = models
    lines = (small_corpus / "test_2016_flickr.de").read_text(encoding="utf-8").splitlines()[:60]
    sources = encode_sources(tokenizer, lines, model.cfg.max_tokens)
    src_ids = pad_sequence([torch.tensor(ids) for ids in sources], batch_first=True,
                           padding_value=model.pad_id)  # (B, S)
    ours, theirs = ([h.ids for h in greedy(m, src_ids, bos=BOS, eos=EOS)] for m in (model, int8))
    differ = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    for i in differ:
        at = next(t for t, (a, b) in enumerate(zip(ours[i] + [EOS], theirs[i] + [EOS])) if a != b)
        one = torch.tensor([sources[i]])  # (1, S)
        tgt_in = torch.tensor([[BOS, *ours[i][:at]]])  # the prefix both decoders shared
        state = model.decode(tgt_in, model.encode(one, None), None)[:, -1]  # (1, D)
        top = model.logits(state)[0].topk(2)
        allowed = bound(state, model.output.weight)[0, top.indices].sum()
        assert top.values[0] - top.values[1] <= allowed, (i, at)
    assert len(differ) <= len(sources) // 2, differ


def test_translate_with_int8_prints_only_translations(tiny_run: Path):
    """A fresh process, as a user runs it: torchao's import-time log lines stay out."""
    optional("torchao")
    done = subprocess.run([sys.executable, "-m", "mha.cli", "translate", str(tiny_run),
                           "--quantization", "int8", "--device", "cpu", *SENTENCES[:2]],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 2 and done.stderr == ""


def test_eval_with_int8_keeps_its_own_files(run_copy: Path):
    optional("torchao")
    result = invoke("eval", run_copy, "--quantization", "int8", "--beam", "1", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert (run_copy / "eval" / "test.greedy.int8.json").is_file()
    assert not (run_copy / "eval" / "test.greedy.json").exists()


def test_missing_torchao_is_one_error_line_naming_the_extra(tiny_run: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)  # `import torchao` now raises ImportError
    assert_user_error(tiny_run, ["translate", tiny_run, "--quantization", "int8", "--device",
                                 "cpu", "Ein Hund."], f"install it with: {INSTALL}")


@pytest.mark.parametrize("engine", ["mha", "ctranslate2"])
def test_an_unknown_quantization_is_refused(tiny_run: Path, engine: str):
    assert_user_error(tiny_run, ["translate", tiny_run, "--quantization", "int4", "--engine",
                                 engine, "Ein Hund."],
                      "--quantization must be one of float32, int8, got 'int4'")


def test_int8_is_refused_off_the_cpu():
    with pytest.raises(ConfigError, match="--quantization int8 is mha's CPU path .* device cuda"):
        check_quantization("int8", "cuda")
    check_quantization("float32", "cuda")
    check_quantization(None, "cuda")
