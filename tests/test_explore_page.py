"""The `mha explore` page in a real browser: headless Chromium driven by Playwright.

One browser and one tiny trained run (test_translate's) serve the session. Every test opens a
page from file:// and reads its state through `window.mhaState`. Without Chromium or Playwright
the tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import test_translate
import torch
from conftest import under_ci
from test_translate import SENTENCES, invoke

from mha.data.tokenizer import Tokenizer
from mha.inference.explore import collect, page_html
from mha.model.attention import MultiHeadAttention
from mha.model.decode import greedy
from mha.model.transformer import Transformer

# the translate tests' fixtures: one tiny trained run per session, loaded; one torch thread
tiny_run, loaded = test_translate.tiny_run, test_translate.loaded
_one_thread = test_translate._one_thread

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--disable-background-networking", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-component-update", "--disable-sync"]
OOV = "Ein Mann 日本 ß </script> {{data}} ☃"  # characters the tiny vocabulary lacks, markup
TEXTS = [*SENTENCES, OOV, ""]
KINDS = ("encoder", "decoder", "cross")
VIEWS = ("model", "head", "steps", "figures")


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.is_file() or importlib.util.find_spec("playwright") is None:
        message = (f"the page tests need Chromium at {CHROMIUM} (apt-get install chromium) and "
                   "the playwright package (pip install -e '.[test]')")
        if under_ci():
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def explored(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The page of the tiny run for TEXTS, written by the command."""
    page = tmp_path_factory.mktemp("explore") / "page.html"
    with test_translate.one_thread():
        result = invoke("explore", tiny_run, *TEXTS, "--output", page, "--device", "cpu")
    assert result.exit_code == 0, result.output
    return page


@dataclasses.dataclass
class Opened:
    page: object  # playwright Page
    requests: list[str]
    errors: list[str]


@pytest.fixture
def open_page(browser):
    """open_page(path) -> Opened: the page loaded from file://, its requests and errors recorded."""
    contexts = []

    def opened(path: Path) -> Opened:
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        contexts.append(context)
        page = context.new_page()
        record = Opened(page, [], [])
        page.on("request", lambda request: record.requests.append(request.url))
        page.on("console", lambda m: record.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda error: record.errors.append(str(error)))
        page.goto(path.as_uri())
        page.wait_for_function("window.mhaState !== undefined")
        return record

    yield opened
    for context in contexts:
        context.close()


def state(opened: Opened, expression: str):
    return opened.page.evaluate(f"() => mhaState.{expression}")


def show(opened: Opened, **choices) -> None:
    """Choose sentence, kind, view or merge through the page's own controls."""
    page = opened.page
    if "sentence" in choices:
        page.select_option("#sentence", str(choices["sentence"]))
    if "kind" in choices:
        page.select_option("#kind", choices["kind"])
    if "merge" in choices:
        page.set_checked("#merge", choices["merge"])
    if "view" in choices:
        page.click(f".tab[data-view={choices['view']}]")


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


def model_attention(model: Transformer, source: list[int], output: list[int]) -> dict:
    """Every attention module's weights, recomputed by hand from the inputs it received in a
    plain forward pass (which takes the fast path, without weights): kind -> L x (H, Tq, Tk)."""
    seen = {kind: [] for kind in KINDS}
    kind_of = {"encoder.self_attn": "encoder", "decoder.self_attn": "decoder",
               "decoder.cross_attn": "cross"}

    def capture(name: str):
        def hook(module: MultiHeadAttention, args: tuple, kwargs: dict) -> None:
            query, key = args[0], args[1]
            q = module.w_q(query).unflatten(-1, (module.num_heads, module.d_k)).transpose(1, 2)
            k = module.w_k(key).unflatten(-1, (module.num_heads, module.d_k)).transpose(1, 2)
            scores = q @ k.transpose(-2, -1) / math.sqrt(module.d_k)  # (1, H, Tq, Tk)
            if kwargs.get("causal"):
                scores = scores.masked_fill(torch.ones_like(scores[0, 0]).triu(1).bool(), -math.inf)
            stack, _, attention = name.split(".")  # e.g. decoder.0.cross_attn
            seen[kind_of[f"{stack}.{attention}"]].append(scores.softmax(dim=-1)[0])
        return hook

    handles = [module.register_forward_pre_hook(capture(name), with_kwargs=True)
               for name, module in model.named_modules() if isinstance(module, MultiHeadAttention)]
    try:
        with torch.no_grad():
            model(torch.tensor([source]), torch.tensor([[Tokenizer.BOS, *output]]))
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_the_page_holds_the_models_own_weights(explored, loaded, open_page):
    model, tokenizer, _ = loaded
    opened = open_page(explored)
    sentences = state(opened, "data.sentences")
    for text, held in zip(TEXTS, sentences):
        source = tokenizer.encode_src([text])[0] if text else [Tokenizer.EOS]
        output = greedy(model, torch.tensor([source]), bos=Tokenizer.BOS, eos=Tokenizer.EOS)[0]
        assert held["tgt_in"] == tokenizer.tgt_pieces([Tokenizer.BOS, *output])
        reference = model_attention(model, source, output)
        for kind in KINDS:
            page_weights = np.array(held["weights"][kind])  # (L, H, Tq, Tk)
            expected = torch.stack(reference[kind]).numpy()
            assert page_weights.shape == expected.shape
            assert np.abs(page_weights - expected).max() <= 1e-4
            assert np.abs(page_weights.sum(axis=-1) - 1).max() <= 2e-3


def word_groups(pieces: list[str]) -> list[list[int]]:
    """The legend's rule: a piece starting with U+2581 or a special token starts a word."""
    specials = {"<s>", "</s>", "<pad>"}
    groups: list[list[int]] = []
    for i, piece in enumerate(pieces):
        if i == 0 or piece.startswith("\u2581") or piece in specials or pieces[i - 1] in specials:
            groups.append([i])
        else:
            groups[-1].append(i)
    return groups


def _kl(p: np.ndarray, m: np.ndarray) -> np.ndarray:
    """KL(p || m) in bits per row, 0 log 0 = 0."""
    return (p * np.log2(np.where(p > 0, p / np.where(m > 0, m, 1), 1))).sum(-1)


def numpy_figures(layers: np.ndarray, diagonal: bool) -> dict:
    """The legend's definitions, on (L, H, R, C) weights."""
    logs = np.log2(np.where(layers > 0, layers, 1))
    entropy = -(layers * logs).sum(-1).mean(-1)  # (L, H)
    max_weight = layers.max(-1).mean(-1)
    L, H, R, C = layers.shape
    js = np.full((L, H), np.nan)
    for l_, h in np.ndindex(L, H):
        distances = []
        for g in set(range(H)) - {h}:
            p, q = layers[l_, h], layers[l_, g]  # (R, C) each
            divergence = 0.5 * _kl(p, (p + q) / 2) + 0.5 * _kl(q, (p + q) / 2)  # (R,)
            distances.append(np.sqrt(np.maximum(divergence, 0)).mean())
        js[l_, h] = np.mean(distances) if distances else np.nan
    figures = {"entropy": entropy, "maxWeight": max_weight, "jsDistance": js}
    if diagonal:
        target = np.floor(np.arange(R) * C / R + 0.5)
        figures["diagonal"] = (layers.argmax(-1) == target).mean(-1)
    return figures


@pytest.mark.parametrize("merge", [False, True])
def test_per_head_figures_equal_numpy(explored, open_page, merge):
    opened = open_page(explored)
    rows_of = {"encoder": "src", "decoder": "tgt_out", "cross": "tgt_out"}
    cols_of = {"encoder": "src", "decoder": "tgt_in", "cross": "src"}
    for sentence in (2, 3):
        held = state(opened, f"data.sentences[{sentence}]")
        for kind in KINDS:
            show(opened, sentence=sentence, kind=kind, merge=merge)
            weights = np.array(held["weights"][kind])  # (L, H, R, C)
            if merge:
                rows, cols = word_groups(held[rows_of[kind]]), word_groups(held[cols_of[kind]])
                weights = np.stack([np.stack([weights[..., r, :][..., c].sum(-1).mean(-1)
                                              for c in cols], -1) for r in rows], -2)
                assert len(state(opened, "current().cols")) == len(cols)
            expected = numpy_figures(weights, kind == "cross")
            shown = state(opened, "figures()")
            assert (shown["diagonal"] is None) == (kind != "cross")
            for name, values in expected.items():
                got = np.array(shown[name], dtype=float)  # null (one head) -> nan
                np.testing.assert_allclose(got, values, atol=1e-9, err_msg=f"{kind} {name}")
            if merge:
                assert np.abs(np.array(state(opened, "current().layers")) - weights).max() < 1e-9


def test_a_beam_page_shows_the_live_hypotheses(tiny_run, open_page, tmp_path):
    page = tmp_path / "beam.html"
    with test_translate.one_thread():
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
