"""The `mha explore` page in a real browser: headless Chromium driven by Playwright.

One browser and one tiny trained run serve the session (conftest.py: `browser`, `explored`,
`open_page`). Every test opens a page from file:// and reads its state through `window.mhaState`.
Without Chromium or Playwright the tests skip, except under CI=true, where they fail. The page's
numbers against independent computations are in test_explore_figures.py.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from helpers import KINDS, OOV, SENTENCES, TEXTS, invoke, numpy_figures, one_thread, show, state

from mha.inference.explore import collect, page_html
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
