"""`mha align`: every head, layer mean and Shift-Att reading scored against the reference in one
batched pass (equal to a sentence-by-sentence computation by hand), align.json written with every
layer and head, bad input one error line; with eflomal installed, its links, cached."""

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_user_error, invoke

from mha.inference.aer import Counts, parse_line
from mha.inference.align import METHODS, attention_counts, default_layer, tabulate
from mha.inference.evaluate import eval_set
from mha.model.attention import AttentionRecorder
from mha.model.transformer import Transformer

pytestmark = pytest.mark.usefixtures("_one_thread")


def diagonal_gold(sources: list[str], references: list[str]) -> list[str]:
    """i-i sure and i-p(i+1) possible, within both sentences: a reference that needs no aligner."""
    lines = []
    for source, reference in zip(sources, references):
        n, m = len(source.split()), len(reference.split())
        lines.append(" ".join([f"{i}-{i}" for i in range(min(n, m))]
                              + [f"{i}-p{i + 1}" for i in range(min(n, m - 1))]))
    return lines


def by_hand(model: Transformer, tokenizer, sources: list[str], references: list[str],
            gold: list[str]) -> dict[tuple, Counts]:
    """Each sentence alone (no padding), links from the weights with numpy, counted with sets."""
    layers, heads = len(model.decoder), model.decoder[0].cross_attn.num_heads
    counts = {(m, layer, h): Counts() for m in METHODS for layer in range(layers)
              for h in range(heads + 1)}
    for source, reference, line in zip(sources, references, gold):
        src_ids = tokenizer.encode_src([source])[0]
        tgt_ids = tokenizer.encode_tgt([reference])[0]
        src_words = np.cumsum([p.startswith("▁") for p in tokenizer.src_pieces(source)[:-1]]) - 1
        tgt_words = np.cumsum([p.startswith("▁") for p in tokenizer.tgt_pieces(tgt_ids[1:-1])]) - 1
        with torch.no_grad(), AttentionRecorder(model) as recorded:
            model(torch.tensor([src_ids]), torch.tensor([tgt_ids[:-1]]))
        for layer in range(layers):
            weights = recorded[f"decoder.{layer}.cross_attn"][0].numpy()  # (H, T + 1, S + 1)
            for h in range(heads + 1):
                cross = weights.mean(0) if h == heads else weights[h]
                for method, rows in (("naive", cross[:-1, :-1]), ("shift", cross[1:, :-1])):
                    found = set()
                    for j in range(tgt_words[-1] + 1):
                        word_rows = rows[tgt_words == j]  # the pieces of target word j
                        mass = [word_rows[:, src_words == i].sum(1).mean()
                                for i in range(src_words[-1] + 1)]
                        found.add((int(np.argmax(mass)), j))
                    counts[method, layer, h].add(found, parse_line(line))
    return counts


def test_the_batched_pass_equals_each_sentence_by_hand(loaded):
    _, tokenizer, cfg = loaded
    torch.manual_seed(0)  # an untrained 3-layer model: attention differs by layer and head
    model = Transformer(replace(cfg.model, decoder_layers=3), tokenizer.src_vocab_size,
                        tokenizer.tgt_vocab_size).eval()
    sources = ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee.",
               "Eine Frau mit einem roten Hut sitzt auf einer Bank.", "Kinder.", "Ein Hund rennt."]
    references = ["A man rides a bike.", "Two dogs play in the snow.",
                  "A woman in a red hat sits on a bench.", "Children.", "A dog is running fast."]
    gold = diagonal_gold(sources, references)
    counts = attention_counts(model, tokenizer, sources, references,
                              [parse_line(line) for line in gold], batch_size=2)  # padded
    assert counts == by_hand(model, tokenizer, sources, references, gold)
    table = tabulate(counts, 3, model.decoder[0].cross_attn.num_heads)["layers"]
    scores = [h[m]["aer"] for entry in table for h in entry["heads"] for m in METHODS]
    assert len(set(scores)) > 1  # the heads, layers and readings do differ


@pytest.fixture
def gold_file(run_copy: Path, tmp_path: Path) -> Path:
    path = tmp_path / "gold.txt"
    path.write_text("\n".join(diagonal_gold(*eval_set(run_copy, "test")[:2])) + "\n")
    return path


def test_align_with_gold_writes_every_layer_and_head(run_copy: Path, gold_file: Path, loaded):
    result = invoke("align", run_copy, "--gold", gold_file, "--limit", "20", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert f"AER against the gold links in {gold_file}" in result.stdout
    report = json.loads((run_copy / "align.json").read_text())
    model = loaded[0]
    layers, heads = len(model.decoder), model.decoder[0].cross_attn.num_heads
    assert [entry["layer"] for entry in report["layers"]] == list(range(layers))
    for entry in report["layers"]:
        assert [h["head"] for h in entry["heads"]] == list(range(heads))
        for scores in [*entry["heads"], entry["mean"]]:
            assert set(scores) >= set(METHODS)
            assert all(0 <= scores[m]["aer"] <= 1 for m in METHODS)
    means = [entry["mean"]["naive"]["aer"] for entry in report["layers"]]
    assert report["best_layer"] == means.index(min(means))
    assert report["reference"] == "gold" and report["sentences"] == 20
    assert not (run_copy / "align").exists()  # no eflomal needed, none run
    assert default_layer(run_copy, layers) == report["best_layer"]


def test_the_default_layer_without_align_json_is_the_second_to_last(tmp_path: Path):
    assert default_layer(tmp_path, 4) == 2 and default_layer(tmp_path, 1) == 0
    (tmp_path / "align.json").write_text(json.dumps({"best_layer": 3}))
    assert default_layer(tmp_path, 4) == 3
    assert default_layer(tmp_path, 3) == 1  # stored for a deeper model: not this one's
    for broken in ("{not json", "[3]", "\udcff"):  # someone else's file: no traceback
        (tmp_path / "align.json").write_text(broken, errors="surrogateescape")
        assert default_layer(tmp_path, 4) == 2


def test_a_gold_file_of_the_wrong_length_is_one_error_line(run_copy: Path, gold_file: Path):
    gold_file.write_text("0-0\n" * 7)
    assert_user_error(run_copy, ["align", run_copy, "--gold", gold_file, "--device", "cpu"],
                      "has 7 lines but there are 300 sentences")


def test_a_link_out_of_range_is_one_error_line_naming_it(run_copy: Path, gold_file: Path):
    lines = gold_file.read_text().splitlines()
    lines[4] = "0-0 99-1"
    gold_file.write_text("\n".join(lines) + "\n")
    assert_user_error(run_copy, ["align", run_copy, "--gold", gold_file, "--device", "cpu"],
                      f"{gold_file} line 5: link 99-1 is out of range")


def test_missing_eflomal_is_one_line_saying_how_to_install_it(
        run_copy: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "eflomal", None)  # import eflomal now raises ImportError
    assert_user_error(run_copy, ["align", run_copy, "--device", "cpu"],
                      "eflomal is not installed; install it with: pip install 'mha[align]'")


def test_a_limit_below_one_is_one_error_line(run_copy: Path):
    assert_user_error(run_copy, ["align", run_copy, "--limit", "0"], "--limit must be at least 1")
