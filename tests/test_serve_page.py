"""The explore page in live mode, from `mha serve` (conftest.py: `served`, `browser`), in headless
Chromium: typed sentences come back as the server's JSON and every view draws them, as the
inline JSON of `mha explore`; the run's parts (stored head figures, alignment, the training tab,
embeddings) join them; no request leaves 127.0.0.1 and the console stays free of errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import (
    OOV,
    SENTENCES,
    Opened,
    heads_report,
    show,
    start_server,
    state,
    stop_server,
)
from stored_reports import align_report, without_text

from mha.inference.heads import all_heads
from mha.inference.word_align import links

pytestmark = pytest.mark.usefixtures("_one_thread")  # one torch thread: the cores are shared

VIEWS = ("model", "head", "steps", "figures")


def open_live(browser, server):
    """The live page of `server` in a new browser context: (context, Opened)."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    opened = Opened(page, [], [])
    page.on("request", lambda request: opened.requests.append(request.url))
    page.on("console", lambda m: opened.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: opened.errors.append(str(error)))
    page.goto(server.url)
    page.wait_for_function("window.mhaLive !== undefined")
    return context, opened


@pytest.fixture
def live(browser, served):
    context, opened = open_live(browser, served)
    yield opened
    context.close()


def ask(opened: Opened, text: str) -> None:
    """Type `text`, press Enter, wait for the answer (shown, or an error)."""
    opened.page.fill("#live-text", text)
    opened.page.press("#live-text", "Enter")
    opened.page.wait_for_function("!window.mhaLive.pending")


def test_a_typed_sentence_is_translated_and_drawn_in_every_view(live, served, tmp_path):
    page = live.page
    assert not page.is_visible("nav") and state(live, "data.sentences.length") == 0
    ask(live, SENTENCES[0])
    answer = served.post("/translate", {"text": [SENTENCES[0]]})[1]
    assert page.inner_text("#output-text") == answer["translations"][0]["text"]
    assert page.inner_text("#source-text") == SENTENCES[0]
    show(live, view="head")
    lines = page.locator("#lines line.line").count()
    assert lines > 0 and state(live, "highlighted") == []
    page.hover("#lines text.token.right[data-index='0']")
    lit = state(live, "highlighted")
    assert lit and all(line.split(":")[2] == "0" for line in lit)
    assert page.locator("#lines line.dim").count() > 0  # the hover changed the drawing
    page.screenshot(path=tmp_path / "live_head_view.png", full_page=True)
    for view in VIEWS:
        show(live, view=view)
        assert page.is_visible(f"#{view}-view")
    assert state(live, "figures().entropy.length") == 1  # the tiny run's one decoder layer

    ask(live, OOV)  # a second sentence: both stay to choose from, the warning shows
    _, explored = served.post("/explore", {"text": OOV})
    assert state(live, "data.sentences.length") == 2 and state(live, "sentence") == 1
    assert state(live, "data.sentences[1]") == explored["sentences"][0]
    assert page.inner_text("#live-status") == explored["warnings"][0]
    assert "U+65E5" in explored["warnings"][0]  # 日, as the CLI names it
    show(live, sentence=0)
    assert page.inner_text("#source-text") == SENTENCES[0]
    assert live.errors == []
    assert all(url.startswith(served.url) for url in live.requests), live.requests
    assert sum(url.endswith("/explore") for url in live.requests) == 2


def test_a_refused_sentence_shows_the_servers_error(live, served):
    ask(live, "a" * 201)
    assert live.page.inner_text("#live-status") == (
        "error: sentence 1 has 201 characters, more than max_chars (200)")
    assert state(live, "data.sentences.length") == 0
    # the browser reports the refused request itself; nothing else went wrong
    assert [e for e in live.errors if "status of 413" not in e] == []
    assert all(url.startswith(served.url) for url in live.requests)


@pytest.fixture(scope="module")
def studied(tiny_run, loaded, tmp_path_factory):
    """`mha serve` on a copy of the tiny run that holds a heads.json and an align.json built by
    hand over its heads (the tiny run kept an attention history): (server, heads, alignment)."""
    run = Path(shutil.copytree(tiny_run, tmp_path_factory.mktemp("studied") / "run"))
    step = torch.load(run / "checkpoints/best.pt", weights_only=True)["step"]
    heads = heads_report(all_heads(loaded[0]), step=step)
    cfg = loaded[2].model
    alignment = align_report(cfg.decoder_layers, cfg.heads, best_layer=cfg.decoder_layers - 1)
    (run / "heads.json").write_text(json.dumps(heads))
    (run / "align.json").write_text(json.dumps(alignment))
    server = start_server(run, run.parent)
    yield server, heads, alignment
    stop_server(server)


def test_the_runs_head_figures_alignment_history_and_embeddings_join_the_live_page(
        browser, studied, tmp_path):
    server, heads, alignment = studied
    context, live = open_live(browser, server)
    page = live.page
    ask(live, SENTENCES[1])
    assert "1 of 6 heads can go before val BLEU drops by 0.5" in page.inner_text("#heads-info")
    show(live, kind="cross", view="model")  # every head coloured by its stored BLEU drop
    chips = page.locator("#grid .panel .importance-chip").evaluate_all(
        "chips => chips.map(c => Number(c.dataset.importance))")
    assert chips == [r["bleu_drop"] for r in heads["heads"] if r["kind"] == "cross"]

    show(live, view="head")  # hide this head: its lines grey, its stored result shown
    records = [r for r in heads["heads"] if r["kind"] == "cross"]
    page.click("#importance button.hide-head[data-head='1']")
    assert page.inner_text("#importance .head-row[data-head='1'] .ablation") == \
        without_text(records[1])
    strokes = page.locator("#lines line[data-head='1']").evaluate_all(
        "lines => lines.map(l => l.getAttribute('stroke'))")
    assert strokes and set(strokes) == {"#b0b0b0"}

    sentence = state(live, "data.sentences[0]")  # word links from the best layer
    expected = links(torch.tensor(sentence["weights"]["cross"][alignment["best_layer"]]),
                     sentence["src"][:-1], sentence["tgt_out"][:-1])
    assert sentence["links"] == [list(link) for link in expected]
    assert page.locator("#lines line.word-link").count() == 0
    page.set_checked("#word-links", True)
    assert page.locator("#lines line.word-link").count() == len(expected)
    show(live, view="figures")
    assert page.is_visible("#alignment-figures table[data-figure='aer']")

    show(live, view="training")  # the run's attention history (the tiny run kept one update)
    page.click("#history-grid .panel[data-layer='0'][data-head='0']")
    assert page.is_visible("#history-canvas") and page.get_attribute(
        "#history-canvas", "data-step") == str(state(live, "data.history.steps[0]"))
    show(live, view="embeddings")
    page.fill("#embed-query", "Hund")
    assert page.locator(".neighbour-table li").count() > 0
    page.screenshot(path=tmp_path / "live_studied.png", full_page=True)
    assert live.errors == []
    assert all(url.startswith(server.url) for url in live.requests), live.requests
    context.close()
