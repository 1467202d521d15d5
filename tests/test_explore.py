"""`mha explore` without a browser: the page's data, its size, its limits and bad input, and the
stored head figures (RUN/heads.json) it embeds or, broken, leaves out with one warning."""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch
from helpers import SENTENCES, assert_user_error, heads_report, invoke

from mha.configs.schema import load_config
from mha.inference import checkpoint
from mha.inference.explore import MAX_SENTENCES, HeadRecord, collect, page_html
from mha.inference.heads import all_heads
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


def explore_one(run, tmp_path, caplog) -> tuple[dict, list[str]]:
    """`mha explore RUN SENTENCE`: the page's data and the warnings that name heads.json."""
    page = tmp_path / "page.html"
    with caplog.at_level(logging.WARNING):
        result = invoke("explore", run, SENTENCES[0], "--output", page, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return page_data(page), [r.getMessage() for r in caplog.records
                             if r.levelno == logging.WARNING and "heads.json" in r.getMessage()]


def test_the_figures_of_mha_heads_go_into_the_page(run_copy, tmp_path, caplog):
    result = invoke("heads", run_copy, "--limit", "5", "--device", "cpu")
    assert result.exit_code == 0, result.output
    stored = json.loads((run_copy / "heads.json").read_text())
    data, warnings = explore_one(run_copy, tmp_path, caplog)
    assert warnings == []
    assert data["checkpoint_step"] == checkpoint.load(run_copy / "checkpoints/best.pt")["step"]
    assert data["checkpoint_step"] == stored["checkpoint_step"]
    fields = set(HeadRecord.model_fields)
    assert [{k: v for k, v in r.items() if k in fields} for r in data["heads"]["heads"]] == [
        {k: r.get(k) for k in fields} for r in stored["heads"]]
    for key in ("split", "sentences", "baseline", "pruning", "can_remove", "spearman"):
        assert data["heads"][key] == stored[key]


def test_figures_from_another_checkpoint_are_embedded_with_a_warning(run_copy, loaded, tmp_path,
                                                                    caplog):
    report = heads_report(all_heads(loaded[0]), step=7)
    (run_copy / "heads.json").write_text(json.dumps(report))
    data, warnings = explore_one(run_copy, tmp_path, caplog)
    step = checkpoint.load(run_copy / "checkpoints/best.pt")["step"]
    assert warnings == [(f"{run_copy / 'heads.json'} was measured on the checkpoint of step 7; "
                         f"the page shows step {step} (rerun `mha heads {run_copy}`)")]
    assert data["checkpoint_step"] == step and data["heads"]["checkpoint_step"] == 7
    assert data["heads"]["heads"] == report["heads"]


def _broken(report: dict, how: str) -> bytes:
    if how == "not JSON":
        return json.dumps(report).encode()[:-40]
    if how == "not UTF-8":
        return b"\xff\xfe" + json.dumps(report).encode()
    if how == "NaN":  # Python's json writes it; the page's JSON.parse would fail on it
        report["heads"][0]["val_loss"] = float("nan")
    if how == "a string for a number":
        report["heads"][1]["val_bleu"] = "high"
    if how == "a missing key":
        del report["baseline"]
    if how == "another model's heads":
        report["heads"].pop()
    if how == "a list":
        report = report["heads"]
    return json.dumps(report).encode()


@pytest.mark.parametrize("how, message", [
    ("not JSON", "cannot be read (Expecting"), ("not UTF-8", "cannot be read ("),
    ("NaN", "heads.0.val_loss: Input should be a finite number"),
    ("a string for a number", "heads.1.val_bleu: Input should be a valid number"),
    ("a missing key", "baseline: Field required"),
    ("another model's heads", "it lists 5 heads, not this model's 6"),
    ("a list", "the file: Input should be a valid dictionary"),
])
def test_a_broken_heads_json_is_one_warning_and_a_page_without_figures(
        run_copy, loaded, tmp_path, caplog, how, message):
    report = heads_report(all_heads(loaded[0]), step=60)
    (run_copy / "heads.json").write_bytes(_broken(report, how))
    data, warnings = explore_one(run_copy, tmp_path, caplog)
    assert len(warnings) == 1 and message in warnings[0], warnings
    assert warnings[0].startswith(f"{run_copy / 'heads.json'}: ")
    assert warnings[0].endswith(
        f"the page leaves out the head figures (rerun `mha heads {run_copy}`)")
    assert "heads" not in data and "checkpoint_step" not in data
    assert [s["text"] for s in data["sentences"]] == [SENTENCES[0]]
