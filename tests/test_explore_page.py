"""The `mha explore` page in a real browser: headless Chromium driven by Playwright.

One browser and one tiny trained run serve the session (conftest.py: `browser`, `explored`,
`open_page`). Every test opens a page from file:// and reads its state through `window.mhaState`.
The stored head figures (RUN/heads.json) are tested on a heads.json built by hand over the tiny
run's real heads, so that every head's importance differs.
Without Chromium or Playwright the tests skip, except under CI=true, where they fail. The page's
numbers against independent computations are in test_explore_figures.py.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    KINDS,
    OOV,
    SENTENCES,
    TEXTS,
    heads_report,
    invoke,
    numpy_figures,
    one_thread,
    show,
    state,
)
from stored_reports import without_text

from mha.inference.explore import collect, page_html
from mha.inference.heads import all_heads
from mha.model.transformer import Transformer

pytestmark = pytest.mark.usefixtures("_one_thread")  # one torch thread: the cores are shared

VIEWS = ("model", "head", "steps", "figures")


def test_every_view_of_every_sentence_renders_offline_without_errors(explored, open_page, tmp_path):
    opened = open_page(explored)
    for sentence, text in enumerate(TEXTS):
        show(opened, sentence=sentence)
        assert opened.page.inner_text("#source-text") == (text or "(empty line)")
        for merge in (False, True):
            for kind in KINDS:
                show(opened, kind=kind, merge=merge)
                for view in VIEWS:
                    show(opened, view=view)
                    assert opened.page.is_visible(f"#{view}-view")
                    if sentence in (0, 3, 4) and kind == "cross":
                        name = f"s{sentence}_{view}_{'words' if merge else 'pieces'}.png"
                        opened.page.screenshot(path=tmp_path / name, full_page=True)
    assert opened.requests == [explored.as_uri()]  # the page itself, nothing else
    assert opened.errors == []
    assert state(opened, "data.sentences[3].text") == OOV  # markup in a sentence stays text


def test_a_panel_per_layer_and_head_for_each_kind_and_a_click_enlarges(loaded, open_page, tmp_path):
    _, tokenizer, cfg = loaded
    torch.manual_seed(0)
    shape = {"encoder_layers": 2, "decoder_layers": 3, "heads": 4}
    model = Transformer(dataclasses.replace(cfg.model, **shape), tokenizer.src_vocab_size,
                        tokenizer.tgt_vocab_size).eval()
    data = {"format": 1, "run": "untrained", "checkpoint": "none", "beam": 1,
            "model": {"d_model": cfg.model.d_model, **shape},
            "sentences": [collect(model, tokenizer, SENTENCES[0], cfg.decode)]}
    path = tmp_path / "deep.html"
    path.write_text(page_html(data), encoding="utf-8")
    opened = open_page(path)
    for kind, layers in (("encoder", 2), ("decoder", 3), ("cross", 3)):
        show(opened, kind=kind)
        assert opened.page.locator("#grid .panel").count() == layers * 4
        opened.page.click("#grid .panel[data-layer='1'][data-head='2']")
        assert state(opened, "enlarged") == [1, 2] and opened.page.is_visible("#enlarged-canvas")
        opened.page.screenshot(path=tmp_path / f"model_view_{kind}.png", full_page=True)
        expected = numpy_figures(np.array(data["sentences"][0]["weights"][kind]), kind == "cross")
        shown = state(opened, "figures()")
        for name, values in expected.items():  # four heads: each against three others
            np.testing.assert_allclose(np.array(shown[name]), values, atol=1e-9)
    assert opened.errors == []


def test_hovering_a_token_lights_its_lines(explored, open_page, tmp_path):
    opened = open_page(explored)
    show(opened, sentence=2, kind="cross", view="head")
    assert state(opened, "highlighted") == []
    lit = []
    for index in (0, 1):  # source tokens: the keys, in the right column
        opened.page.hover(f"#lines text.token.right[data-index='{index}']")
        lit.append(state(opened, "highlighted"))
        assert lit[-1] and all(line.split(":")[2] == str(index) for line in lit[-1])
    assert lit[0] != lit[1]
    opened.page.screenshot(path=tmp_path / "head_view.png", full_page=True)
    target = "#lines text.token.left[data-index='0']"  # a target token: what it attends to
    opened.page.hover(target)
    assert all(line.split(":")[1] == "0" for line in state(opened, "highlighted"))
    assert {line.split(":")[0] for line in state(opened, "highlighted")} == {"0", "1"}
    opened.page.set_checked("#average", True)
    opened.page.hover(target)
    assert {line.split(":")[0] for line in state(opened, "highlighted")} == {"mean"}
    opened.page.set_checked("#average", False)
    opened.page.set_checked("#head-chooser input[data-head='0']", False)
    opened.page.hover(target)
    assert {line.split(":")[0] for line in state(opened, "highlighted")} == {"1"}


def test_the_step_slider_walks_through_the_candidates(explored, open_page, tmp_path):
    opened = open_page(explored)
    show(opened, sentence=2, view="steps")
    steps = state(opened, "data.sentences[2].steps")
    seen = []
    for step in (0, 1):
        opened.page.fill("#step", str(step))
        items = opened.page.locator("#candidates li").all_inner_texts()
        assert len(items) == 5 and [i.split(" ")[0] for i in items] == [
            c[0] for c in steps[step]["candidates"]]
        assert state(opened, "step") == step
        seen.append(items)
    assert seen[0] != seen[1]
    probabilities = [p for _, p in steps[0]["candidates"]]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-3
    opened.page.screenshot(path=tmp_path / "steps_view.png", full_page=True)


def test_a_beam_page_shows_the_live_hypotheses(tiny_run, open_page, tmp_path):
    page = tmp_path / "beam.html"
    with one_thread():
        result = invoke("explore", tiny_run, SENTENCES[0], "--beam", "3", "--output", page)
        translated = invoke("translate", tiny_run, "--beam", "3", SENTENCES[0]).stdout.strip()
    assert result.exit_code == 0, result.output
    opened = open_page(page)
    assert state(opened, "data.sentences[0].translation") == translated
    show(opened, view="steps")
    opened.page.fill("#step", "1")
    hypotheses = opened.page.locator("#beams li").all_inner_texts()
    assert 1 <= len(hypotheses) <= 3 and opened.page.is_visible("#beams")
    scores = [float(h.rsplit(" ", 1)[1]) for h in hypotheses]
    assert scores == sorted(scores, reverse=True) and all(s < 0 for s in scores)
    opened.page.screenshot(path=tmp_path / "beam_steps.png", full_page=True)
    assert opened.errors == []


@pytest.fixture(scope="module")
def with_heads(tiny_run, loaded, tmp_path_factory) -> tuple[Path, dict]:
    """The page of a copy of the tiny run that holds a heads.json built by hand over its heads
    (measured on its own checkpoint), and that report."""
    run = Path(shutil.copytree(tiny_run, tmp_path_factory.mktemp("heads") / "run"))
    report = heads_report(all_heads(loaded[0]), step=torch.load(
        run / "checkpoints/best.pt", weights_only=True)["step"])
    (run / "heads.json").write_text(json.dumps(report))
    page = run / "explore.html"
    with one_thread():
        result = invoke("explore", run, *SENTENCES[:2], "--output", page, "--device", "cpu")
    assert result.exit_code == 0, result.output
    return page, report


def redness(css_colour: str) -> int:
    """Red minus blue of an "rgb(r, g, b)": rises along the page's scale, blue to white to red."""
    r, _, b = map(int, re.findall(r"\d+", css_colour)[:3])
    return r - b


def test_heads_are_coloured_by_importance_everywhere_they_are_listed(with_heads, open_page):
    page, report = with_heads
    opened = open_page(page)
    info = opened.page.inner_text("#heads-info")
    assert f"{report['sentences']} val sentences, checkpoint best (step " \
        f"{report['checkpoint_step']})" in info
    assert "1 of 6 heads can go before val BLEU drops by 0.5, 2 before it drops by 1.0" in info
    assert not opened.page.is_visible("#heads-warning")
    drops = {(r["kind"], r["layer"], r["head"]): r["bleu_drop"] for r in report["heads"]}
    colours = {}
    for kind in KINDS:
        show(opened, kind=kind, view="model")
        chips = opened.page.locator("#grid .panel .importance-chip")
        shown = chips.evaluate_all("""chips => chips.map(c => [c.closest('.panel').dataset.layer,
            c.closest('.panel').dataset.head, Number(c.dataset.importance),
            getComputedStyle(c).backgroundColor])""")
        assert [(kind, int(l_), int(h), d) for l_, h, d, _ in shown] == [
            (k, l_, h, d) for (k, l_, h), d in drops.items() if k == kind]
        assert len({d for _, _, d, _ in shown}) == 2  # two heads of different importance
        (*_, low_colour), (*_, high_colour) = sorted(shown, key=lambda s: s[2])
        assert redness(high_colour) > redness(low_colour)  # redder: matters more
        colours.update({drop: colour for _, _, drop, colour in shown})
    by_drop = sorted(colours)  # across kinds: the more BLEU falls, the redder
    assert [redness(colours[d]) for d in by_drop] == sorted(redness(colours[d]) for d in by_drop)
    assert len({colours[d] for d in by_drop}) == len(by_drop)
    assert colours[max(by_drop)] == "rgb(178, 24, 43)"  # the largest |drop|: the scale's end
    record = report["heads"][-1]  # its figures on hover: the chip's tooltip
    panel = f"#grid .panel[data-layer='{record['layer']}'][data-head='{record['head']}']"
    title = opened.page.get_attribute(f"{panel} .importance-chip", "title")
    assert title.startswith(without_text(record))
    show(opened, view="figures")
    tables = opened.page.locator("#figure-tables table").evaluate_all(
        "ts => ts.map(t => t.dataset.figure)")
    assert {"stored-bleu_drop", "stored-rank", "stored-role", "stored-entropy"} <= set(tables)
    cells = opened.page.locator("table[data-figure='stored-bleu_drop'] td").all_inner_texts()
    assert len(cells) == 2 and all(re.fullmatch(r"[+\u2212]\d+\.\d\d", c) for c in cells)
    show(opened, view="steps")
    assert opened.page.locator("#step-attention th .importance-chip").count() == 2
    assert opened.errors == [] and opened.requests == [page.as_uri()]


def strokes(opened, selector: str) -> list[str]:
    return opened.page.locator(selector).evaluate_all("ls => ls.map(l => l.getAttribute('stroke'))")


def test_hiding_a_head_greys_its_lines_and_shows_its_stored_result(with_heads, open_page,
                                                                   tmp_path):
    page, report = with_heads
    opened = open_page(page)
    show(opened, kind="cross", view="head")
    records = [r for r in report["heads"] if r["kind"] == "cross"]
    rows = opened.page.locator("#importance .head-row")
    assert rows.count() == 2
    first, second = rows.all_inner_texts()
    assert f"role: {records[0]['role']}" in first and "entropy" in first
    assert "no role" in second and f"rank {records[1]['rank']} of 6" in second
    lines = "#lines line[data-head='1']"
    before = strokes(opened, lines)
    assert before and set(before) == {"#ff7f0e"}  # head 2's colour
    assert opened.page.locator("#importance .ablation").count() == 0
    opened.page.click("#importance button.hide-head[data-head='1']")
    assert opened.page.inner_text("#importance .head-row[data-head='1'] .ablation") == \
        without_text(records[1])
    after = strokes(opened, lines)
    assert len(after) == len(before) and set(after) == {"#b0b0b0"}  # still drawn, greyed
    opened.page.hover("#lines text.token.left[data-index='0']")
    assert {line.split(":")[0] for line in state(opened, "highlighted")} == {"0"}
    opened.page.screenshot(path=tmp_path / "hidden_head.png", full_page=True)
    show(opened, view="model")
    hidden = opened.page.locator("#grid .panel.hidden-head")
    assert hidden.count() == 1 and hidden.get_attribute("data-head") == "1"
    show(opened, kind="encoder")  # hiding is per attention: the encoder's head 2 stays
    assert opened.page.locator("#grid .panel.hidden-head").count() == 0
    show(opened, kind="cross", view="head")
    opened.page.click("#importance button.hide-head[data-head='1']")  # "show this head"
    restored = strokes(opened, lines)
    assert restored == before and opened.page.locator("#importance .ablation").count() == 0
    assert opened.errors == [] and opened.requests == [page.as_uri()]


def test_without_roles_or_from_another_checkpoint(with_heads, open_page, tmp_path):
    """heads.json without roles (as `mha heads` wrote it before they were measured), measured on
    another checkpoint than the page's."""
    page, report = with_heads
    data = json.loads(re.search(r'id="mha-data">(.*?)</script>', page.read_text(encoding="utf-8"),
                                re.DOTALL).group(1))
    bare = heads_report([(r["kind"], r["layer"], r["head"]) for r in report["heads"]],
                        step=data["checkpoint_step"] - 1, roles=False)
    path = tmp_path / "bare.html"
    path.write_text(page_html({**data, "heads": bare}), encoding="utf-8")
    opened = open_page(path)
    assert opened.page.inner_text("#heads-warning") == (
        f"These head figures were measured on the checkpoint of step {bare['checkpoint_step']};"
        f" this page shows step {data['checkpoint_step']}: rerun `mha heads {data['run']}`.")
    show(opened, kind="cross", view="head")
    assert "role" not in opened.page.inner_text("#importance")
    assert "entropy" not in opened.page.inner_text("#importance")
    show(opened, view="figures")
    tables = opened.page.locator("#figure-tables table").evaluate_all(
        "ts => ts.map(t => t.dataset.figure)")
    assert "stored-bleu_drop" in tables and "entropy" in tables  # the latter: the page's own
    assert "stored-role" not in tables and "stored-entropy" not in tables
    assert opened.errors == [] and opened.requests == [path.as_uri()]


def test_without_heads_json_the_page_shows_no_head_figures(explored, open_page):
    opened = open_page(explored)
    assert state(opened, "data.heads") is None
    for view in VIEWS:
        show(opened, view=view)
        assert opened.page.locator(".importance-chip, .head-row, .hide-head").count() == 0
    assert not opened.page.is_visible("#heads-info")
    assert not opened.page.is_visible("#heads-warning")
    assert opened.errors == [] and opened.requests == [explored.as_uri()]
