"""The explore page's training tab: RUN/attention_history embedded as train.watch kept it, the
entropy plot's figures against numpy, left out on request or with one warning when broken, and,
in the real browser (Playwright, as test_explore_page.py), the update slider redrawing the stored
weights and moving the plot's marker. One tiny run trained with train.watch=2 and a validation
every 20 updates serves the module."""

from __future__ import annotations

import base64
import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import KINDS, SENTENCES, assert_user_error, invoke, make_tiny_run, numpy_figures, show

from mha.inference.explore import explore, page_html
from mha.inference.explore_embeddings import quantised
from mha.inference.explore_history import history_data
from mha.inference.history import FOLDER, LEVELS, read_history

pytestmark = pytest.mark.usefixtures("_one_thread")  # one torch thread: the cores are shared

SHORT = ("decode.max_len_a=0.5", "decode.max_len_b=4")  # validations decode a few pieces only


@pytest.fixture(scope="module")
def watched_run(small_corpus, tmp_path_factory) -> Path:
    """A tiny run whose history holds updates 20, 40 and 60 of two sentences."""
    return make_tiny_run(tmp_path_factory.mktemp("watched") / "run", small_corpus,
                         "train.watch=2", "train.eval_every=20", *SHORT)


@pytest.fixture(scope="module")
def watched_page(watched_run) -> Path:
    page = watched_run / "explore.html"
    result = invoke("explore", watched_run, SENTENCES[0], "--output", page, "--device", "cpu")
    assert result.exit_code == 0, result.output
    return page


def page_data(path: Path) -> dict:
    block = re.search(r'id="mha-data">(.*?)</script>', path.read_text(encoding="utf-8"), re.DOTALL)
    return json.loads(block.group(1))


def by_kind(weights: dict[str, torch.Tensor], kind: str) -> np.ndarray:
    """The recorder's names of one kind, stacked in layer order: (L, H, Tq, Tk)."""
    names = sorted((name for name in weights if {"encoder": name.startswith("encoder."),
                    "decoder": name.startswith("decoder.") and name.endswith("self_attn"),
                    "cross": name.endswith("cross_attn")}[kind]),
                   key=lambda name: int(name.split(".")[1]))
    return np.stack([weights[name].double().numpy() for name in names])


def test_the_page_holds_the_stored_history_and_its_entropy(watched_run, watched_page):
    history = page_data(watched_page)["history"]
    sentences, stored = read_history(watched_run)
    assert history["steps"] == sorted(stored) == [20, 40, 60] and history["levels"] == LEVELS
    assert history["sentences"] == sentences and len(sentences) == 2
    assert history["alignment"] is None  # the hook, until `mha align` scores each update
    for kind in KINDS:
        for n, step in enumerate(history["steps"]):
            kept = [by_kind(sentence, kind) for sentence in stored[step]]
            for sentence, weights in enumerate(kept):
                raw = np.frombuffer(base64.b64decode(history["weights"][n][sentence][kind]),
                                    np.uint8)
                np.testing.assert_array_equal(raw, np.rint(weights * LEVELS).ravel())
            entropy = np.mean([numpy_figures(w, False)["entropy"].mean() for w in kept])
            assert history["entropy"][kind][n] == pytest.approx(entropy, abs=1e-4)
        S = [len(s["src"]) for s in sentences]
        T = [len(s["tgt_in"]) for s in sentences]  # the decoder's row t sees t + 1 keys
        uniform = {"encoder": np.log2(S), "cross": np.log2(S),
                   "decoder": [np.log2(np.arange(1, t + 1)).mean() for t in T]}
        assert history["uniform"][kind] == pytest.approx(np.mean(uniform[kind]), abs=1e-4)


def test_no_history_leaves_the_tab_out_and_history_needs_one(watched_run, run_copy, tmp_path):
    page = tmp_path / "page.html"
    result = invoke("explore", watched_run, SENTENCES[0], "--output", page, "--no-history")
    assert result.exit_code == 0, result.output
    assert "history" not in page_data(page) and "embeddings" in page_data(page)
    shutil.rmtree(run_copy / FOLDER)  # as a run trained with train.watch=0 leaves it
    result = invoke("explore", run_copy, SENTENCES[0], "--output", page)
    assert result.exit_code == 0, result.output
    assert "history" not in page_data(page)
    page.unlink()
    assert_user_error(run_copy, ["explore", run_copy, SENTENCES[0], "--output", page,
                                 "--history"], f"has no {FOLDER}/ to show")
    assert not page.exists()


def _garbled_step(folder: Path) -> str:
    next(folder.glob("step_*.pt")).write_bytes(b"cut short")
    return "cannot be read"


def _no_sentences(folder: Path) -> str:
    (folder / "sentences.json").unlink()
    return "cannot be read (FileNotFoundError"


def _another_model(folder: Path) -> str:
    path = next(folder.glob("step_*.pt"))
    state = torch.load(path, weights_only=True)
    state["weights"][0].pop("decoder.0.cross_attn")
    torch.save(state, path)
    return "sentence 1: its weights do not fit this model"


def _fewer_sentences(folder: Path) -> str:
    sentences = json.loads((folder / "sentences.json").read_text(encoding="utf-8"))
    (folder / "sentences.json").write_text(json.dumps(sentences[:1]), encoding="utf-8")
    return "holds 4 sentences, sentences.json 1"


def _no_step(folder: Path) -> str:
    for path in folder.glob("step_*.pt"):
        path.unlink()
    return "it holds no step yet"


@pytest.mark.parametrize("damage", [_garbled_step, _no_sentences, _another_model,
                                    _fewer_sentences, _no_step], ids=lambda f: f.__name__[1:])
def test_a_broken_history_is_one_warning_and_a_page_without_the_tab(run_copy, tmp_path, caplog,
                                                                    damage):
    problem = damage(run_copy / FOLDER)
    with caplog.at_level(logging.WARNING):
        data = explore(run_copy, [SENTENCES[0]], tmp_path / "page.html", device="cpu",
                       history=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
                and r.name == "mha.inference.explore_history"]
    assert len(warnings) == 1 and warnings[0].startswith(f"{run_copy / FOLDER}: ")
    assert problem in warnings[0] and warnings[0].endswith("the page leaves out the training tab")
    assert "\n" not in warnings[0]
    assert "history" not in data and "history" not in page_data(tmp_path / "page.html")


def test_a_preset_sized_history_and_table_keep_the_page_small(tmp_path):
    """30 validations of the first four Multi30k val sentences (their lengths at the preset's
    6000 pieces: (S, T) below), 4 + 4 layers of 4 heads, and a tied 6000 x 128 table."""
    lengths, model = [(14, 13), (12, 12), (13, 13), (18, 20)], {
        "d_model": 128, "heads": 4, "encoder_layers": 4, "decoder_layers": 4}
    folder = tmp_path / FOLDER
    folder.mkdir()
    (folder / "sentences.json").write_text(json.dumps(
        [{"src": ["a"] * S, "tgt_in": ["b"] * T, "tgt_out": ["b"] * T} for S, T in lengths]))
    generator = torch.Generator().manual_seed(0)

    def weights(*shape: int) -> torch.Tensor:
        return torch.randint(0, LEVELS + 1, shape, generator=generator, dtype=torch.uint8)

    for step in range(250, 7501, 250):
        kept = [{**{f"encoder.{layer}.self_attn": weights(4, S, S) for layer in range(4)},
                 **{f"decoder.{layer}.self_attn": weights(4, T, T) for layer in range(4)},
                 **{f"decoder.{layer}.cross_attn": weights(4, T, S) for layer in range(4)}}
                for S, T in lengths]
        torch.save({"step": step, "weights": kept}, folder / f"step_{step:07d}.pt")
    history = history_data(tmp_path, model)["history"]
    assert len(history["steps"]) == 30
    table = {"vocabularies": [[f"p{i}" for i in range(6000)]], "k": 10, "specials": [0, 1, 2, 3],
             "tables": [{"name": "tied", "vocabulary": 0, **quantised(torch.randn(6000, 128))}]}
    data = {"format": 1, "run": "r", "checkpoint": "best", "beam": 1, "model": model,
            "sentences": [], "history": history}
    with_history = len(page_html(data).encode("utf-8"))
    both = len(page_html({**data, "embeddings": table}).encode("utf-8"))
    print(f"history {with_history / 1e6:.2f} MB; with the table {both / 1e6:.2f} MB")
    assert with_history < 2_000_000 and both < 3_200_000


def cell_colours(opened) -> list[list[str]]:
    """The training tab's enlarged heatmap, read back from its pixels: "rgb(r,g,b)" per cell."""
    return opened.page.evaluate("""() => {
        const canvas = document.getElementById("history-canvas"), d = canvas.dataset;
        const { rows, cols } = mhaState.historyShown(), context = canvas.getContext("2d");
        const cell = Number(d.cell), at = (i, j) => context.getImageData(
            Number(d.left) + j * cell + cell / 2, Number(d.top) + i * cell + cell / 2, 1, 1).data;
        return rows.map((_, i) => cols.map((_, j) => `rgb(${Array.from(at(i, j)).slice(0, 3)})`));
    }""")


def test_the_slider_redraws_each_updates_stored_weights_and_moves_the_marker(
        watched_run, watched_page, open_page, tmp_path):
    _, stored = read_history(watched_run)
    opened = open_page(watched_page)
    show(opened, kind="cross", view="training")
    opened.page.select_option("#history-sentence", "1")
    opened.page.click("#history-grid .panel[data-layer='0'][data-head='1']")
    seen, markers = {}, {}
    for index, step in ((0, 20), (2, 60)):
        opened.page.fill("#history-step", str(index))
        assert opened.page.get_attribute("#history-canvas", "data-step") == str(step)
        weights = stored[step][1]["decoder.0.cross_attn"][1]  # sentence 2, head 2: (T, S)
        as_stored = (np.rint(weights.double().numpy() * LEVELS) / LEVELS).tolist()  # byte / 255
        expected = opened.page.evaluate("w => w.map(row => row.map(v => mhaState.color(v)))",
                                        as_stored)
        seen[step] = cell_colours(opened)
        assert seen[step] == expected
        marker = opened.page.locator("#entropy-marker")
        assert marker.get_attribute("data-step") == str(step)
        markers[step] = float(marker.get_attribute("x1"))
        opened.page.screenshot(path=tmp_path / f"training_{step}.png", full_page=True)
    assert not torch.equal(stored[20][1]["decoder.0.cross_attn"], stored[60][1][
        "decoder.0.cross_attn"]) and seen[20] != seen[60]  # they differ as the weights do
    assert markers[20] < markers[60]
    points = opened.page.locator("#entropy-plot polyline.series").evaluate_all(
        "ls => ls.map(l => [l.dataset.kind, l.getAttribute('points').split(' ').length])")
    assert points == [[kind, 3] for kind in KINDS]
    assert opened.errors == [] and opened.requests == [watched_page.as_uri()]
