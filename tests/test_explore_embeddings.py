"""The explore page's embeddings tab: the tables' int8 form, and in the real browser (Playwright,
as test_explore_page.py) a typed piece, a typed word and a clicked piece answered with the
neighbours mha.inference.embeddings finds, within the int8 rounding, in one tied table or three."""

from __future__ import annotations

import base64
import dataclasses
import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import SENTENCES, show, state

from mha.inference.embeddings import neighbours, tables
from mha.inference.explore import page_html
from mha.inference.explore_embeddings import embedding_data, quantised
from mha.inference.export import vocabularies
from mha.model.transformer import Transformer

pytestmark = pytest.mark.usefixtures("_one_thread")  # one torch thread: the cores are shared

WORD_START = "\u2581"


def test_int8_rows_are_within_half_a_step_of_the_table():
    table = torch.randn(50, 16) * torch.linspace(0.01, 3, 50)[:, None]
    table[0] = 0  # PAD's row
    stored = quantised(table)
    rows = np.frombuffer(base64.b64decode(stored["rows"]), np.int8).reshape(50, 16)
    scales = np.frombuffer(base64.b64decode(stored["scales"]), "<f4")
    assert np.abs(rows).max(axis=1)[1:].tolist() == [127] * 49 and not rows[0].any()
    error = np.abs(rows * scales[:, None] - table.numpy())
    assert (error <= scales[:, None] / 2 + 1e-6).all()


def shown(opened, table: str) -> list[tuple[str, float]]:
    return [(piece, float(similarity)) for piece, similarity in opened.page.locator(
        f".neighbour-table[data-table='{table}'] li").evaluate_all(
        "items => items.map(i => [i.dataset.piece, i.dataset.similarity])")]


def assert_same_neighbours(found: list[tuple[str, float]], table: torch.Tensor,
                           pieces: list[str], ids: list[int]) -> None:
    """The page's answer against embeddings.neighbours for the mean of rows `ids`: rank by rank
    within 0.01, each piece's similarity within 0.01 of its own, and each top five among the
    other's ten."""
    vector = table[ids].mean(0)
    expected = neighbours(table, vector, pieces, k=10, exclude=set(ids))
    similarity = F.cosine_similarity(table, vector[None], dim=-1)  # (V,)
    assert len(found) == len(expected) == 10
    for (piece, value), (_, expected_value) in zip(found, expected):
        assert abs(value - expected_value) <= 0.01
        assert abs(value - float(similarity[pieces.index(piece)])) <= 0.01
    assert {p for p, _ in expected[:5]} <= {p for p, _ in found}
    assert {p for p, _ in found[:5]} <= {p for p, _ in expected}


def greedy(word: str, pieces: list[str]) -> list[int]:
    """The page's rule: WORD_START + word, longest vocabulary piece first, specials never."""
    ids, text, i = {p: n for n, p in enumerate(pieces) if n > 3}, WORD_START + word, 0
    found = []
    while i < len(text):
        n = next((n for n in range(len(text) - i, 0, -1) if text[i:i + n] in ids), 0)
        if n:
            found.append(ids[text[i:i + n]])
        i += n or 1
    return found


def test_typed_pieces_and_words_get_the_neighbours_of_python(explored, loaded, open_page):
    model, tokenizer, _ = loaded
    (name, table), = tables(model).items()
    pieces = vocabularies(tokenizer)[0]
    opened = open_page(explored)
    show(opened, view="embeddings")
    opened.page.set_checked("#embed-exact", True)
    asked = tokenizer.src_pieces(SENTENCES[0])[:-1]  # without EOS
    assert name == "tied" and len(asked) >= 4 and any(not p.startswith(WORD_START) for p in asked)
    for piece in asked:
        opened.page.fill("#embed-query", piece)
        assert_same_neighbours(shown(opened, "tied"), table, pieces, [pieces.index(piece)])
    words = [w.strip(".") for s in SENTENCES for w in s.split()]
    split = {w: tokenizer.encode_src([w])[0][:-1] for w in words}
    word = next(w for w in words if len(split[w]) > 1 and split[w] == greedy(w, pieces))
    opened.page.set_checked("#embed-exact", False)
    opened.page.fill("#embed-query", word)
    heading = opened.page.inner_text(".neighbour-table[data-table='tied'] h3")
    assert heading == "tied table: pieces " + " + ".join(pieces[i] for i in split[word])
    assert_same_neighbours(shown(opened, "tied"), table, pieces, split[word])
    opened.page.fill("#embed-query", "日本")  # characters no piece covers: named
    assert "not in this vocabulary: 日 本" in opened.page.inner_text("#neighbour-tables")
    assert opened.errors == [] and opened.requests == [explored.as_uri()]


def test_a_click_on_a_piece_looks_it_up(explored, loaded, open_page):
    model, tokenizer, _ = loaded
    table, pieces = tables(model)["tied"], vocabularies(tokenizer)[0]
    opened = open_page(explored)
    show(opened, sentence=1, view="head")
    token = "#lines text.token.right[data-index='1']"
    piece = opened.page.text_content(token)
    opened.page.click(token)
    assert state(opened, "view") == "embeddings"
    assert state(opened, "embedQuery") == {"text": piece, "exact": True}
    assert opened.page.input_value("#embed-query") == piece
    assert_same_neighbours(shown(opened, "tied"), table, pieces, [pieces.index(piece)])
    neighbour = shown(opened, "tied")[0][0]  # a neighbour is a piece too
    opened.page.click(".neighbour-table li >> nth=0")
    assert state(opened, "embedQuery") == {"text": neighbour, "exact": True}
    show(opened, view="head", merge=True)  # a merged word is looked up as a word
    opened.page.click(token)
    assert state(opened, "embedQuery")["exact"] is False
    assert opened.errors == [] and opened.requests == [explored.as_uri()]


def test_an_untied_model_answers_in_each_of_its_three_tables(explored, loaded, open_page,
                                                             tmp_path):
    _, tokenizer, cfg = loaded
    torch.manual_seed(0)
    untied = Transformer(dataclasses.replace(cfg.model, tie_embeddings=False),
                         tokenizer.src_vocab_size, tokenizer.tgt_vocab_size).eval()
    data = json.loads(re.search(r'id="mha-data">(.*?)</script>',
                                explored.read_text(encoding="utf-8"), re.DOTALL).group(1))
    path = tmp_path / "untied.html"
    path.write_text(page_html({**data, **embedding_data(untied, tokenizer)}), encoding="utf-8")
    opened = open_page(path)
    show(opened, view="embeddings")
    opened.page.set_checked("#embed-exact", True)
    pieces = vocabularies(tokenizer)[0]
    piece = tokenizer.src_pieces(SENTENCES[1])[0]
    opened.page.fill("#embed-query", piece)
    found = tables(untied)
    assert list(found) == ["source", "target", "output"]
    for name, table in found.items():
        assert_same_neighbours(shown(opened, name), table, pieces, [pieces.index(piece)])
    assert opened.errors == [] and opened.requests == [path.as_uri()]
