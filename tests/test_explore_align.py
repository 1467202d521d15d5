"""The explore page's alignment parts (inference/explore_align.py, explore_page/align.js): the
per-head AER figure and the word links from RUN/align.json, in the real browser (conftest.py's
`browser`, `open_page`), and the training tab's alignment hook on hand-built tensors."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from helpers import SENTENCES, invoke, one_thread, show, state
from stored_reports import align_report

from mha.inference.explore_align import add_alignment, alignment_by_step
from mha.inference.word_align import links, word_ids

pytestmark = pytest.mark.usefixtures("_one_thread")


@pytest.fixture(scope="module")
def with_align(tiny_run, loaded, tmp_path_factory) -> tuple[Path, dict]:
    """The page of a copy of the tiny run that holds a hand-built align.json, and that report."""
    run = Path(shutil.copytree(tiny_run, tmp_path_factory.mktemp("align") / "run"))
    cfg = loaded[2].model
    report = align_report(cfg.decoder_layers, cfg.heads, best_layer=cfg.decoder_layers - 1)
    (run / "align.json").write_text(json.dumps(report))
    page = run / "explore.html"
    with one_thread():
        result = invoke("explore", run, *SENTENCES[:3], "--output", page, "--device", "cpu")
    assert result.exit_code == 0, result.output
    return page, report


def test_the_aer_figure_shows_the_files_numbers(with_align, open_page):
    page, report = with_align
    opened = open_page(page)
    show(opened, kind="cross", view="figures")
    table = "#alignment-figures table[data-figure='aer']"
    assert opened.page.is_visible(table)
    assert "agreement with eflomal, not accuracy" in opened.page.inner_text(f"{table} caption")
    for entry in report["layers"]:
        cells = opened.page.locator(f"{table} tr[data-layer='{entry['layer']}'] td")
        expected = [h["naive"]["aer"] for h in entry["heads"]] + [
            entry["mean"]["naive"]["aer"], entry["mean"]["shift"]["aer"]]
        assert cells.all_inner_texts() == [f"{v:.3f}" for v in expected]
    show(opened, kind="encoder")
    assert not opened.page.is_visible(table)  # scores of encoder-decoder attention only
    assert opened.errors == [] and opened.requests == [page.as_uri()]


def test_the_toggle_draws_one_link_per_output_word(with_align, open_page):
    page, report = with_align
    opened = open_page(page)
    for sentence in range(3):
        show(opened, sentence=sentence, kind="cross", view="head")
        data = state(opened, f"data.sentences[{sentence}]")
        expected = links(torch.tensor(data["weights"]["cross"][report["best_layer"]]),
                         data["src"][:-1], data["tgt_out"][:-1])
        assert data["links"] == [list(link) for link in expected]
        words = len(set(word_ids(data["tgt_out"][:-1])))
        assert opened.page.locator("#lines line.word-link").count() == 0
        opened.page.set_checked("#word-links", True)
        for merge in (False, True):
            show(opened, merge=merge)
            marks = opened.page.locator("#lines line.word-link")
            assert marks.count() == words
            targets = [int(marks.nth(n).get_attribute("data-target")) for n in range(words)]
            assert targets == list(range(words))
        opened.page.set_checked("#word-links", False)
        show(opened, merge=False)
        assert opened.page.locator("#lines line.word-link").count() == 0
    assert opened.errors == [] and opened.requests == [page.as_uri()]


def test_without_align_json_nothing_changes(explored, open_page):
    opened = open_page(explored)
    assert state(opened, "data.alignment") is None
    assert all("links" not in s for s in state(opened, "data.sentences"))
    show(opened, kind="cross", view="head")
    assert not opened.page.is_visible("#word-links-choice")
    show(opened, view="figures")
    assert not opened.page.is_visible("#alignment-figures")
    assert state(opened, "data.history.alignment") is None  # the tiny run has a history
    show(opened, view="training")
    assert "--split val` to see alignment as it forms" in opened.page.inner_text(
        "#alignment-plot")
    assert opened.errors == [] and opened.requests == [explored.as_uri()]


@pytest.mark.parametrize("content", ["{not json", json.dumps({"split": "test"}),
                                     json.dumps(align_report(5, 1, 0))])
def test_a_broken_align_json_is_one_warning_and_no_figure(tmp_path, caplog, content):
    (tmp_path / "align.json").write_text(content)
    cross = torch.rand(2, 2, 3, 3).softmax(-1).tolist()  # (L, H, T + 1, S + 1)
    data = {"model": {"decoder_layers": 2, "heads": 2},
            "sentences": [{"src": ["▁a", "▁b", "</s>"], "tgt_out": ["▁x", "▁y", "</s>"],
                           "weights": {"cross": cross}}]}
    with caplog.at_level(logging.WARNING):
        add_alignment(data, tmp_path)
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "align.json" in caplog.text and "alignment" not in data
    assert "links" not in data["sentences"][0]


def test_the_history_hook_counts_links_that_agree_with_eflomal(tmp_path):
    torch.manual_seed(0)
    sentences = [{"src": ["▁a", "▁b", "c", "</s>"], "tgt_out": ["▁x", "▁y", "▁z", "</s>"]},
                 {"src": ["▁d", "▁e", "</s>"], "tgt_out": ["▁u", "</s>"]}]
    steps = [[torch.rand(2, 2, len(s["tgt_out"]), len(s["src"])) for s in sentences]
             for _ in range(3)]  # per step, per sentence (L, H, T + 1, S + 1)
    assert alignment_by_step(tmp_path, sentences, steps) is None  # no align.json
    report = align_report(2, 2, best_layer=1)
    (tmp_path / "align.json").write_text(json.dumps(report))
    (tmp_path / "align").mkdir()
    found = [links(cross[1], s["src"][:-1], s["tgt_out"][:-1]) for cross, s in
             zip(steps[0], sentences)]
    (tmp_path / "align" / "eflomal.val.txt").write_text(
        "\n".join(" ".join(f"{i}-{j}" for i, j in f) for f in found) + "\n")
    assert alignment_by_step(tmp_path, sentences, steps) is None  # align.json scored test
    (tmp_path / "align.json").write_text(json.dumps({**report, "split": "val"}))
    shares = alignment_by_step(tmp_path, sentences, steps)["agreement"]
    assert shares[0] == 1.0
    for step, share in zip(steps[1:], shares[1:]):
        agree = sum(link in set(f) for cross, s, f in zip(step, sentences, found)
                    for link in links(cross[1], s["src"][:-1], s["tgt_out"][:-1]))
        assert share == round(agree / 4, 4)


def test_the_training_tab_plots_alignment_against_updates(tiny_run, loaded, open_page, tmp_path):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    cfg = loaded[2].model
    report = align_report(cfg.decoder_layers, cfg.heads, best_layer=0)
    (run / "align.json").write_text(json.dumps({**report, "split": "val"}))
    (run / "align").mkdir(exist_ok=True)
    (run / "align" / "eflomal.val.txt").write_text("0-0 1-1 2-2\n" * 200)
    page = run / "explore.html"
    with one_thread():
        result = invoke("explore", run, SENTENCES[0], "--output", page, "--device", "cpu")
    assert result.exit_code == 0, result.output
    opened = open_page(page)
    history = state(opened, "data.history")
    shares = history["alignment"]["agreement"]
    assert len(shares) == len(history["steps"]) and all(0 <= v <= 1 for v in shares)
    show(opened, view="training")
    points = opened.page.get_attribute("#alignment-svg polyline", "points").split()
    assert len(points) == len(shares)
    marks = []
    for step in (0, len(shares) - 1):
        opened.page.fill("#history-step", str(step))
        marks.append(opened.page.get_attribute("#alignment-marker", "x1"))
    assert marks[0] != marks[1] or len(shares) == 1
    assert opened.errors == [] and opened.requests == [page.as_uri()]
