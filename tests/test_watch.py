"""train.watch: the watched sentences' attention at every validation, resume-exact and small."""

from __future__ import annotations

import torch
from helpers import tiny

from mha.data.prepare import load_prepared
from mha.inference.history import FOLDER, read_history
from mha.inference.run import load_model
from mha.model.attention import AttentionRecorder
from mha.training.loop import train

WATCH = ("train.eval_every=3", "train.watch=2")


def test_the_history_is_resume_exact(tmp_path, small_corpus):
    train(tiny(tmp_path / "a", small_corpus, "train.max_steps=12", *WATCH))
    train(tiny(tmp_path / "b", small_corpus, "train.max_steps=6", *WATCH))
    stray = tmp_path / "b" / FOLDER / "step_0000009.pt"  # as if killed before last.pt was saved
    stray.write_bytes(b"recorded, then the checkpoint was lost")
    train(tiny(tmp_path / "b", small_corpus, "train.max_steps=12", *WATCH), resume=True)
    sentences, straight = read_history(tmp_path / "a")
    same_sentences, resumed = read_history(tmp_path / "b")
    assert sorted(straight) == sorted(resumed) == [3, 6, 9, 12]
    assert same_sentences == sentences and len(sentences) == 2
    for step in straight:
        for a, b in zip(straight[step], resumed[step], strict=True):
            assert a.keys() == b.keys()
            for name in a:
                assert (a[name] - b[name]).abs().max() <= 1 / 255, (step, name)


def test_the_history_holds_the_models_weights_to_within_8_bits(tmp_path, small_corpus):
    run = tmp_path / "run"
    train(tiny(run, small_corpus, "train.max_steps=6", *WATCH))
    sentences, history = read_history(run)
    model, tokenizer, _ = load_model(run, "last", "cpu")
    first = load_prepared(run).splits["val"][0]
    assert sentences[0]["src"] == tokenizer.src_pieces(first["src"])
    with AttentionRecorder(model) as weights, torch.no_grad():
        model(torch.tensor([first["src_ids"]]), torch.tensor([first["tgt_ids"][:-1]]))
    kept = history[6][0]
    assert kept.keys() == weights.keys()
    for name, w in weights.items():
        H, Tq, Tk = w[0].shape
        assert kept[name].shape == (H, Tq, Tk)
        assert (kept[name] - w[0]).abs().max() <= 1 / 510 + 1e-6, name
    files = list((run / FOLDER).glob("step_*.pt"))
    values = sum(w.numel() for sentence in history[6] for w in sentence.values())
    assert max(f.stat().st_size for f in files) < values + 8192  # one byte a weight, and headers


def test_watch_zero_keeps_no_history(tmp_path, small_corpus):
    run = tmp_path / "run"
    train(tiny(run, small_corpus, "train.max_steps=6", "train.eval_every=3", "train.watch=0"))
    assert not (run / FOLDER).exists()
