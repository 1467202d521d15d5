"""The explore page in live mode, from `mha serve` (conftest.py: `served`, `browser`), in headless
Chromium: typed sentences come back as the server's JSON and every view draws them, as the
inline JSON of `mha explore`; no request leaves 127.0.0.1 and the console stays free of errors."""

from __future__ import annotations

import pytest
from helpers import OOV, SENTENCES, Opened, show, state

pytestmark = pytest.mark.usefixtures("_one_thread")  # one torch thread: the cores are shared

VIEWS = ("model", "head", "steps", "figures")


@pytest.fixture
def live(browser, served):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    opened = Opened(page, [], [])
    page.on("request", lambda request: opened.requests.append(request.url))
    page.on("console", lambda m: opened.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: opened.errors.append(str(error)))
    page.goto(served.url)
    page.wait_for_function("window.mhaLive !== undefined")
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
