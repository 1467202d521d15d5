"""The compiled training step (training/compiled.py) against the eager one: the same losses and
gradients, dropout on; no recompile for a new batch shape; a compiled run resumes (to rounding) and
keeps plain checkpoints; train.compile's values and what `auto` decides. The compiles cost most
of this module's time (about a minute in all on a 2-core CPU)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch._dynamo
from helpers import losses, tiny

from mha.configs.schema import Config, ConfigError, TrainConfig, load_config
from mha.inference import checkpoint
from mha.model import Transformer
from mha.training.compiled import CompiledLoss, compile_decision
from mha.training.loop import train
from mha.training.loss import summed_loss

VOCAB = 200


def batch(batch_size: int, src_len: int, tgt_len: int, seed: int) -> tuple:
    """Random ids with padding at the ends of some rows: src_ids, tgt_in, tgt_out."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, VOCAB, (batch_size, src_len), generator=g)
    tgt = torch.randint(4, VOCAB, (batch_size, tgt_len + 1), generator=g)
    src[: batch_size // 2, src_len - 2:] = 0
    tgt[: batch_size // 3, tgt_len - 3:] = 0
    return src, tgt[:, :-1], tgt[:, 1:]


def loss_and_grads(step, model: Transformer, data: tuple, precision: str) -> tuple:
    torch.manual_seed(7)  # the same dropout masks for both: compiled draws as eager draws
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = step(*data)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_compiled_step_gives_the_eager_losses_and_gradients(precision: str) -> None:
    cfg = load_config("tiny", ["model.d_model=32", "model.d_ff=64", "model.dropout=0.1"])
    torch.manual_seed(0)
    eager = Transformer(cfg.model, VOCAB, VOCAB).train()
    model = copy.deepcopy(eager)
    compiled = CompiledLoss(model, label_smoothing=0.1)
    tolerance = {"fp32": 1e-5, "bf16": 5e-2}[precision]  # bf16: the fused ops round less often
    for i, shape in enumerate([(6, 9, 11), (9, 7, 5)]):  # the second shape must not recompile
        with torch._dynamo.config.patch(error_on_recompile=i > 0):
            want, want_grads = loss_and_grads(
                lambda *d: summed_loss(eager, *d, label_smoothing=0.1), eager,
                batch(*shape, seed=i), precision)
            got, got_grads = loss_and_grads(compiled, model, batch(*shape, seed=i), precision)
        torch.testing.assert_close(got, want, rtol=tolerance, atol=0)
        largest = max(grad.norm() for grad in want_grads.values())
        for name, grad in want_grads.items():  # W_K's bias: a zero gradient, rounding noise
            error = (got_grads[name] - grad).norm() / max(grad.norm(), 1e-2 * largest)
            assert error < tolerance, (name, error.item())
    assert compiled.compile_seconds is not None
    assert model.state_dict().keys() == eager.state_dict().keys()


def test_a_compiled_run_resumes_to_rounding_and_keeps_plain_checkpoints(tmp_path, small_corpus):
    on = ("train.compile=true", "model.dropout=0.1", "train.warmup_steps=2")
    straight = train(tiny(tmp_path / "a", small_corpus, "train.max_steps=6", *on))
    train(tiny(tmp_path / "b", small_corpus, "train.max_steps=3", *on))
    resumed = train(tiny(tmp_path / "b", small_corpus, "train.max_steps=6", *on), resume=True)
    expected, got = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(got) == list(range(1, 7))
    for step in expected:  # two compiled runs agree to rounding, not bit for bit
        assert abs(expected[step] - got[step]) < 1e-5, step
    for (name, a), b in zip(straight.model.state_dict().items(),
                            resumed.model.state_dict().values()):
        if not name.endswith("w_k.bias"):  # its gradient is 0 (softmax ignores a shift of all
            # the scores), so Adam turns rounding noise into lr-sized steps, in eager runs too
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=name)
    saved = checkpoint.load(tmp_path / "a" / "checkpoints" / "last.pt")["model"]
    assert saved.keys() == straight.model.state_dict().keys()
    assert not [key for key in saved if "_orig_mod" in key]


@pytest.mark.parametrize("value, message", [
    ("1", "train.compile must be one of auto, true, false, got 1$"),
    ("maybe", "train.compile must be one of auto, true, false, got 'maybe'"),
    ("null", "train.compile must be one of auto, true, false, got None"),
])
def test_train_compile_takes_auto_true_or_false(value: str, message: str) -> None:
    assert load_config("tiny", ["train.compile=true"]).train.compile == "true"
    assert load_config("tiny", ["train.compile=false"]).train.compile == "false"
    assert Config().train.compile == "auto"
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", [f"train.compile={value}"])


def settings(**changes: object) -> TrainConfig:
    return dataclasses.replace(Config().train, **changes)


def test_auto_does_not_compile_and_true_is_refused_under_torchrun() -> None:
    """auto: off wherever it was measured (the compiled update was no faster on a quiet CPU)."""
    for planned in (settings(), settings(max_time=None, max_steps=50_000),
                    load_config("tiny").train):
        assert not compile_decision(planned, 1)[0] and not compile_decision(planned, 2)[0]
    assert compile_decision(settings(compile="true"), 1) == (True, "true")
    assert compile_decision(settings(compile="false", max_time="2h"), 1) == (False, "false")
    with pytest.raises(ConfigError, match="not supported under torchrun"):
        compile_decision(settings(compile="true"), 2)
