"""`mha score`: the model's log-probability of given translations is training's teacher-forced
loss without label smoothing, per token, per sentence and for the whole set."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import SENTENCES, assert_user_error, invoke

from mha.data.batching import collate
from mha.inference.heads import loss_batches, summed_token_loss, val_loss
from mha.inference.score import score_pairs
from mha.inference.translate import MhaEngine

pytestmark = pytest.mark.usefixtures("_one_thread")
PAIRS = 60  # the first pairs of the tiny run's val split


@pytest.fixture(scope="module")
def val_files(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from mha.data.prepare import load_prepared

    split = load_prepared(tiny_run).splits["val"]
    folder = tmp_path_factory.mktemp("score")
    files = folder / "val.de", folder / "val.en"
    for path, column in zip(files, ("src", "tgt")):
        path.write_text("\n".join(split[column][:PAIRS]) + "\n", encoding="utf-8")
    return files


def test_the_sets_perplexity_is_exp_of_the_validation_loss(tiny_run, loaded, val_files):
    model = loaded[0]
    result = invoke("score", tiny_run, "--src-file", val_files[0], "--tgt-file", val_files[1],
                    "--json")
    assert result.exit_code == 0, result.output
    scored = json.loads(result.stdout)
    batches = loss_batches(tiny_run, "val", PAIRS, 16, model.cfg.max_tokens, torch.device("cpu"))
    with torch.no_grad():
        summed = sum(summed_token_loss(model, batch)[0].item() for batch in batches)
    assert len(scored["sentences"]) == PAIRS
    assert scored["log_prob"] == pytest.approx(-summed, rel=1e-5)
    assert scored["perplexity"] == pytest.approx(math.exp(val_loss(model, batches)), rel=1e-5)
    assert scored["length"] == sum(int(b[2].ne(0).sum()) for b in batches)


@torch.no_grad()
def test_each_sentence_and_token_is_its_own_cross_entropy(loaded, val_files):
    model, tokenizer, cfg = loaded
    sources, targets = (path.read_text(encoding="utf-8").splitlines()[:8] for path in val_files)
    scored = score_pairs(MhaEngine(model, tokenizer, cfg.decode), sources, targets, batch_size=3)
    for source, target, sentence in zip(sources, targets, scored):
        batch = collate(tokenizer.encode_src([source]), tokenizer.encode_tgt([target]))
        loss, count = summed_token_loss(model, (batch.src_ids, batch.tgt_in, batch.tgt_out))
        assert sentence.log_prob == pytest.approx(-loss.item(), rel=1e-5)
        assert len(sentence.tokens) == count
        per_token = F.cross_entropy(model(batch.src_ids, batch.tgt_in)[0], batch.tgt_out[0],
                                    reduction="none")  # (T,)
        torch.testing.assert_close(torch.tensor([lp for _, lp in sentence.tokens]), -per_token,
                                   atol=1e-5, rtol=1e-5)
        assert [piece for piece, _ in sentence.tokens] == \
            tokenizer.tgt_pieces(batch.tgt_out[0].tolist())
        assert sentence.perplexity == pytest.approx(math.exp(loss.item() / count))


def test_files_and_stdin_pairs_give_the_same_report(tiny_run, val_files):
    sources, targets = (path.read_text(encoding="utf-8").splitlines()[:5] for path in val_files)
    (val_files[0].parent / "few.de").write_text("\n".join(sources) + "\n", encoding="utf-8")
    (val_files[0].parent / "few.en").write_text("\n".join(targets) + "\n", encoding="utf-8")
    files = ["--src-file", val_files[0].parent / "few.de", "--tgt-file",
             val_files[0].parent / "few.en"]
    from_files = invoke("score", tiny_run, *files, "--tokens")
    piped = "".join(f"{s}\t{t}\n" for s, t in zip(sources, targets))
    from_stdin = invoke("score", tiny_run, "--tokens", input=piped)
    assert from_files.exit_code == 0, from_files.output
    assert from_files.stdout == from_stdin.stdout
    lines = from_files.stdout.splitlines()
    scored = json.loads(invoke("score", tiny_run, *files, "--json", "--tokens").stdout)
    assert len(lines) == 6 and lines[-1] == f"perplexity: {scored['perplexity']:.4f}"
    for line, sentence in zip(lines, scored["sentences"]):
        total, per_token, perplexity, tokens = line.split("\t")
        assert float(total) == pytest.approx(sentence["log_prob"], abs=1e-4)
        assert float(per_token) == pytest.approx(sentence["log_prob"] / sentence["length"],
                                                 abs=1e-4)
        assert float(perplexity) == pytest.approx(math.exp(-float(per_token)), rel=1e-3)
        assert len(tokens.split(" ")) == sentence["length"] == len(sentence["tokens"])
        assert tokens.split(" ")[-1].startswith("</s>:")


def test_bad_score_input_is_one_error_line(tiny_run, tmp_path):
    def write(name: str, *lines: str) -> Path:
        path = tmp_path / name
        path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
        return path

    two, three = write("two.de", *SENTENCES[:2]), write("three.en", *SENTENCES)
    gap = write("gap.en", "A man.", "  ")
    score = ["score", tiny_run]
    cases = [
        ([*score, "--src-file", two, "--tgt-file", three], "has 2 lines and"),
        ([*score, "--src-file", two, "--tgt-file", gap], "line 2: empty target"),
        ([*score, "--src-file", gap, "--tgt-file", two], "line 2: empty source"),
        ([*score, "--src-file", two], "give both --src-file and --tgt-file"),
        ([*score, "--src-file", two, "--tgt-file", tmp_path / "none.en"], "none.en"),
        ([*score, "--src-file", write("one.de", "Hund"), "--tgt-file",
          write("long.en", " ".join(["dog"] * 400))], "more than the model's positions allow"),
        ([*score, "--engine", "onnx"], "--engine must be one of"),
    ]
    for args, message in cases:
        assert_user_error(tiny_run, args, message)
    assert_user_error(tiny_run, score, "stdin, line 2: expected source<TAB>target",
                      input=b"Ein Hund.\tA dog.\nZwei Hunde.\n")
    assert_user_error(tiny_run, score, "stdin, line 1: empty target", input=b"Ein Hund.\t\n")
