"""The moving average of the weights: its arithmetic, exact resume, best.pt holding what scored."""

from __future__ import annotations

import pytest
import torch
from helpers import losses, tiny

from mha.configs.schema import ModelConfig
from mha.inference.checkpoint import CheckpointError
from mha.model.decode import greedy
from mha.model.transformer import Transformer
from mha.training.ema import EMA
from mha.training.loop import train
from mha.training.monitor import read_metrics

SMALL = ModelConfig(d_model=16, heads=2, encoder_layers=1, decoder_layers=1, d_ff=32,
                    dropout=0.0, max_positions=32)


def test_the_average_follows_the_formula_after_each_optimizer_step():
    torch.manual_seed(0)
    model = Transformer(SMALL, 20, 20)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    ema = EMA.attach(model, optimizer, decay=0.6)
    expected = [p.detach().clone() for p in model.parameters()]
    src, tgt = torch.randint(3, 20, (4, 6)), torch.randint(3, 20, (4, 5))
    for update in range(1, 6):
        optimizer.zero_grad()
        model(src, tgt).square().mean().backward()
        optimizer.step()  # the hook updates the average
        decay = min(0.6, (1 + update) / (10 + update))
        expected = [decay * e + (1 - decay) * p.detach()
                    for e, p in zip(expected, model.parameters())]
    assert ema.updates == 5
    for shadow, want in zip(ema.model.parameters(), expected):
        torch.testing.assert_close(shadow, want)
    assert not any(p.requires_grad for p in ema.model.parameters())
    assert EMA.attach(model, optimizer, decay=0.0) is None


def test_decoding_with_the_average_sees_each_update():
    """Inference caches stacked W_Q, W_K, W_V: an in-place update of the average must reach it."""
    torch.manual_seed(0)
    model = Transformer(SMALL, 20, 20)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    ema = EMA.attach(model, optimizer, decay=0.5)
    src, tgt = torch.randint(3, 20, (3, 7)), torch.randint(3, 20, (3, 5))
    with torch.no_grad():
        before = ema.model(src, tgt)  # (B, T, V), stacks cached
    for _ in range(3):
        optimizer.zero_grad()
        model(src, tgt).logsumexp(-1).mean().backward()
        optimizer.step()
    fresh = Transformer(SMALL, 20, 20)
    fresh.load_state_dict(ema.model.state_dict())
    with torch.no_grad():
        after, want = ema.model(src, tgt), fresh.eval()(src, tgt)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, want)
    assert [h.ids for h in greedy(ema.model, src, bos=1, eos=2)] == \
        [h.ids for h in greedy(fresh, src, bos=1, eos=2)]


def test_resumed_run_with_the_average_equals_uninterrupted_run(tmp_path, small_corpus):
    ema = ["train.ema_decay=0.9"]
    train(tiny(tmp_path / "a", small_corpus, "train.max_steps=10", *ema))
    train(tiny(tmp_path / "b", small_corpus, "train.max_steps=5", *ema))
    changed = r"train\.ema_decay \(0\.9 in the checkpoint, 0\.5 now"
    with pytest.raises(CheckpointError, match=changed):
        train(tiny(tmp_path / "b", small_corpus, "train.max_steps=10", "train.ema_decay=0.5"),
              resume=True)
    train(tiny(tmp_path / "b", small_corpus, "train.max_steps=10", *ema), resume=True)
    expected, got = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(got) == list(range(1, 11))
    assert all(abs(expected[step] - got[step]) < 1e-6 for step in expected)
    straight, resumed = (torch.load(tmp_path / run / "checkpoints" / "last.pt", weights_only=True)
                         for run in ("a", "b"))
    assert straight["ema"]["updates"] == resumed["ema"]["updates"] == 10
    for name, weight in straight["ema"]["weights"].items():
        torch.testing.assert_close(resumed["ema"]["weights"][name], weight, atol=1e-6, rtol=0,
                                   msg=name)


def test_validation_scores_the_average_and_best_pt_holds_it(tmp_path, small_corpus):
    run = tmp_path / "run"
    train(tiny(run, small_corpus, "train.max_steps=6", "train.eval_every=6",
               "train.ema_decay=0.99"))
    records = read_metrics(run / "metrics.jsonl")
    validation = [r for r in records if "val_bleu" in r]
    assert len(validation) == 1
    assert {"val_loss", "val_bleu", "raw_val_loss", "raw_val_bleu"} <= validation[0].keys()
    assert validation[0]["val_loss"] != validation[0]["raw_val_loss"]
    best, last = (torch.load(run / "checkpoints" / f"{name}.pt", weights_only=True)
                  for name in ("best", "last"))
    assert best["weights"] == "ema" and "weights" not in last
    for name, weight in last["ema"]["weights"].items():
        assert torch.equal(best["model"][name], weight), name
    assert not torch.equal(best["model"]["decoder_norm.weight"],
                           last["model"]["decoder_norm.weight"])


def test_without_the_average_checkpoints_keep_the_raw_weights(tmp_path, small_corpus):
    run = tmp_path / "run"
    train(tiny(run, small_corpus, "train.max_steps=5", "train.eval_every=5"))
    best, last = (torch.load(run / "checkpoints" / f"{name}.pt", weights_only=True)
                  for name in ("best", "last"))
    assert last["ema"] is None and "weights" not in best
    records = read_metrics(run / "metrics.jsonl")
    assert not any("raw_val_bleu" in r for r in records)
