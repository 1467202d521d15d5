"""`mha explore` without a browser: the page's data, its size, its limits and bad input."""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch
from helpers import SENTENCES, assert_user_error, invoke

from mha.configs.schema import load_config
from mha.inference.explore import MAX_SENTENCES, collect, page_html
from mha.model.transformer import Transformer

pytestmark = pytest.mark.usefixtures("_one_thread")  # one torch thread: the cores are shared

# 20 words; at the tiny run's 200-piece vocabulary they make 35 pieces, more than the preset's
# 6000 pieces would
TWENTY_WORDS = ("Ein Mann und eine Frau mit einem Hund sitzt auf einer Bank in der Stadt vor "
                "einem Haus und Auto")


def page_data(path) -> dict:
    text = path.read_text(encoding="utf-8")
    block = re.search(r"<script type=\"application/json\" id=\"mha-data\">(.*?)</script>",
                      text, re.DOTALL)
    return json.loads(block.group(1))


def test_the_page_holds_every_sentence_with_four_decimals(tiny_run, tmp_path):
    source = tmp_path / "in.de"
    source.write_text(f"{SENTENCES[0]}\n\n{SENTENCES[1]}\n", encoding="utf-8")
    page = tmp_path / "page.html"
    result = invoke("explore", tiny_run, "--input", source, "--output", page)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{page}: 3 of at most 100 sentences; open it in a browser"
    data = page_data(page)
    assert [s["text"] for s in data["sentences"]] == [SENTENCES[0], "", SENTENCES[1]]
    assert data["sentences"][1]["src"] == ["</s>"]  # an empty line: the model reads EOS alone
    translated = invoke("translate", tiny_run, "--input", source).stdout.splitlines()
    assert [data["sentences"][i]["translation"] for i in (0, 2)] == [translated[0], translated[2]]
    for sentence in data["sentences"]:
        for layers in sentence["weights"].values():
            weights = torch.tensor(layers, dtype=torch.float64)
            assert torch.equal((weights * 1e4).round() / 1e4, weights)
        assert len(sentence["steps"]) == len(sentence["tgt_out"])
        assert all(len(step["candidates"]) == 5 for step in sentence["steps"])


def test_unknown_characters_are_named_once_and_still_explored(tiny_run, tmp_path, caplog):
    page = tmp_path / "page.html"
    with caplog.at_level(logging.WARNING):
        result = invoke("explore", tiny_run, "Ein Hund 😀 bellt 😀.", "中", "--output", page)
    assert result.exit_code == 0, result.output
    warnings = [r.getMessage() for r in caplog.records if "does not know" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("the arguments: 3 characters")
    assert "<unk>" in page_data(page)["sentences"][1]["src"]


def test_a_twenty_word_sentence_at_the_preset_size_stays_under_a_megabyte(loaded):
    """Untrained, the model decodes up to the length cap (1.5 S + 10): the largest page."""
    _, tokenizer, _ = loaded
    preset = load_config("multi30k_de_en", [])
    torch.manual_seed(0)
    model = Transformer(preset.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size).eval()
    sentence = collect(model, tokenizer, TWENTY_WORDS, preset.decode)
    S, T = len(sentence["src"]), len(sentence["tgt_out"])
    assert len(TWENTY_WORDS.split()) == 20 and S > 30 and T == int(1.5 * S + 10) + 1
    m = preset.model
    data = {"format": 1, "run": "r", "checkpoint": "best", "beam": 1, "sentences": [sentence],
            "model": {"d_model": m.d_model, "heads": m.heads, "encoder_layers": m.encoder_layers,
                      "decoder_layers": m.decoder_layers}}
    assert len(page_html(data).encode("utf-8")) < 1_000_000


def test_the_sentence_limit(tiny_run, tmp_path):
    page, source = tmp_path / "page.html", tmp_path / "in.de"
    source.write_text("Hallo.\n" * MAX_SENTENCES, encoding="utf-8")
    result = invoke("explore", tiny_run, "--input", source, "--output", page)
    assert result.exit_code == 0, result.output
    assert len(page_data(page)["sentences"]) == MAX_SENTENCES
    page.unlink()
    source.write_text("Hallo.\n" * (MAX_SENTENCES + 1), encoding="utf-8")
    assert_user_error(tiny_run, ["explore", tiny_run, "--input", source, "--output", page],
                      f"101 sentences, more than the page's limit of {MAX_SENTENCES}")
    assert not page.exists()


def test_bad_input_is_one_error_line_and_writes_nothing(tiny_run, tmp_path):
    not_a_run = tmp_path / "not_a_run"
    not_a_run.mkdir()
    page = tmp_path / "page.html"
    cases = [
        (["explore", not_a_run, "Hallo", "--output", page], "has no checkpoints/best.pt"),
        (["explore", tmp_path / "missing", "Hallo", "--output", page], "does not exist"),
        (["explore", tiny_run, "--output", page], "no sentence to explore"),
        (["explore", tiny_run, "Hallo", "--output", tmp_path / "no" / "page.html"],
         f"folder {tmp_path / 'no'} does not exist"),
        (["explore", tiny_run, "Hallo", "--input", tmp_path / "in.de"], "not both"),
        (["explore", tiny_run, "--input", tmp_path / "in.de", "--output", page], "in.de"),
    ]
    for args, message in cases:
        assert_user_error(tiny_run, args, message)
    assert list(tmp_path.rglob("*")) == [not_a_run]
    assert not (tiny_run / "explore.html").exists()
