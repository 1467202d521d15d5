"""`mha translate`: line discipline, input sources, cached vs uncached, beams, pictures, bad input.

The session fixture `tiny_run` (conftest.py) is a real run folder made in seconds by `mha train`'s
own code: a tokenizer and encoded data from 300 Multi30k pairs, a tiny model trained for 60 updates.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import selectors
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import datasets
import pytest
import torch
from helpers import SENTENCES, assert_user_error, invoke

from mha.cli.stdin import read_chunks
from mha.configs.schema import DataConfig
from mha.data.tokenizer import train_tokenizer
from mha.inference import checkpoint
from mha.inference.pictures import attention_weights, plot_attention
from mha.inference.translate import MhaEngine, translate_lines
from mha.model.decode import beam_search, greedy
from mha.model.transformer import Transformer
from mha.training.monitor import read_metrics

pytestmark = pytest.mark.usefixtures("_one_thread")


def _pad(rows: list[list[int]]) -> torch.Tensor:
    out = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.tensor(row)
    return out  # (B, longest)


def translate_all(loaded, lines, **options) -> list[str]:
    model, tokenizer, cfg = loaded
    settings = {"batch_size": 4, "beam": 1, **options}
    engine = MhaEngine(model, tokenizer, cfg.decode, use_cache=settings.pop("use_cache", True))
    return list(translate_lines(engine, lines, **settings))


def test_the_tiny_run_is_trained(tiny_run):
    """make_tiny_run's 60 updates learn (6.2 -> 4.7 here), with one validation, at the end."""
    records = read_metrics(tiny_run / "metrics.jsonl")
    loss = {r["step"]: r["loss"] for r in records if "loss" in r}
    assert max(loss) == 60 and loss[60] < 0.85 * loss[min(loss)], loss
    assert [r["step"] for r in records if "val_bleu" in r] == [60]
    assert checkpoint.load(tiny_run / "checkpoints" / "best.pt")["step"] == 60


def test_one_line_out_per_line_in_in_order_with_empty_lines_kept(tiny_run, loaded):
    lines = [SENTENCES[0], "", SENTENCES[1], "   ", SENTENCES[2]]
    result = invoke("translate", tiny_run, *lines)
    assert result.exit_code == 0, result.output
    out = result.stdout.splitlines()
    assert len(out) == 5 and out[1] == "" and out[3] == ""
    assert all(out[i] for i in (0, 2, 4)), out
    alone = [translate_all(loaded, [s])[0] for s in SENTENCES]  # batching must not change order
    assert [out[0], out[2], out[4]] == alone


def test_arguments_input_file_stdin_and_output_file_agree(tiny_run, tmp_path):
    lines = [*SENTENCES, "", SENTENCES[0]]
    source = tmp_path / "in.de"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    from_args = invoke("translate", tiny_run, *lines).stdout
    from_file = invoke("translate", tiny_run, "--input", source).stdout
    from_stdin = invoke("translate", tiny_run, "--batch-size", "2", input=source.read_text()).stdout
    written = invoke("translate", tiny_run, "--input", source, "--output", tmp_path / "out.en")
    assert written.exit_code == 0 and written.stdout == ""
    assert from_args == from_file == from_stdin == (tmp_path / "out.en").read_text()
    assert len(from_args.splitlines()) == len(lines)


def test_uncached_greedy_gives_the_same_output(tiny_run, loaded, small_corpus):
    lines = (small_corpus / "val.de").read_text(encoding="utf-8").splitlines()[:24]
    assert translate_all(loaded, lines, use_cache=False) == translate_all(loaded, lines)
    cached = invoke("translate", tiny_run, *SENTENCES).stdout
    assert invoke("translate", tiny_run, "--no-cache", *SENTENCES).stdout == cached


def test_beam_of_one_without_length_penalty_is_greedy(loaded):
    model, tokenizer, _ = loaded
    src_ids = _pad(tokenizer.encode_src(SENTENCES))
    beam = beam_search(model, src_ids, beam=1, bos=2, eos=3, length_penalty=0.0)
    assert [n[0].ids for n in beam] == [h.ids for h in greedy(model, src_ids, bos=2, eos=3)]



def test_beam_search_translates_every_line(tiny_run):
    result = invoke("translate", tiny_run, "--beam", "4", SENTENCES[0], "", SENTENCES[1])
    assert result.exit_code == 0, result.output
    out = result.stdout.splitlines()
    assert len(out) == 3 and out[0] and out[1] == "" and out[2]


def test_too_long_a_sentence_is_cut_with_a_warning_naming_its_line(tiny_run, caplog):
    long_sentence = " ".join(["Hund"] * 400)
    result = invoke("translate", tiny_run, SENTENCES[0], long_sentence)
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 2
    assert any("line 2" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


def test_a_pipe_gets_each_line_before_the_next_is_written():
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb") as stream, concurrent.futures.ThreadPoolExecutor(1) as pool:
        chunks = read_chunks(stream, 64)
        os.write(write_fd, "a\nö".encode())  # "ö" has no newline yet: it must wait
        assert pool.submit(next, chunks).result(timeout=10) == ["a"]
        os.write(write_fd, b"\n\nc")
        os.close(write_fd)
        assert pool.submit(list, chunks).result(timeout=10) == [["ö", "", "c"]]


def test_the_command_answers_a_line_at_a_time_producer(tiny_run):
    command = [sys.executable, "-m", "mha.cli", "translate", str(tiny_run), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, env=env) as process:
        timer = threading.Timer(120, process.kill)  # a hang fails the test instead of blocking it
        timer.start()
        try:
            process.stdin.write(f"{SENTENCES[0]}\n".encode())
            process.stdin.flush()
            with selectors.DefaultSelector() as selector:  # the answer comes while stdin is open
                selector.register(process.stdout, selectors.EVENT_READ)
                assert selector.select(timeout=100), "no answer before the next line was sent"
            first = process.stdout.readline()
            process.stdin.write(f"{SENTENCES[1]}\n".encode())
            process.stdin.close()
            rest = process.stdout.read()
        finally:
            timer.cancel()
    assert process.returncode == 0
    assert first.strip() and len(rest.splitlines()) == 1


def test_attention_picture_has_a_panel_per_layer_and_head(tiny_run, loaded, tmp_path):
    _, tokenizer, cfg = loaded
    picture = tmp_path / "attention.png"
    result = invoke("translate", tiny_run, SENTENCES[2], "--attention", picture, "--self-attention")
    assert result.exit_code == 0, result.output
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.stdout.strip() == translate_all(loaded, [SENTENCES[2]])[0]
    torch.manual_seed(0)
    deeper = Transformer(dataclasses.replace(cfg.model, decoder_layers=3),
                         tokenizer.src_vocab_size, tokenizer.tgt_vocab_size).eval()
    attention = attention_weights(deeper, tokenizer, SENTENCES[0], cfg.decode)
    S, T = len(attention.src_pieces), len(attention.tgt_out_pieces)
    assert [tuple(w.shape) for w in attention.cross] == [(2, T, S)] * 3
    for self_attention, rows in ((False, 3), (True, 2 * 3)):
        figure = plot_attention(attention, self_attention=self_attention)
        assert len([ax for ax in figure.axes if ax.get_label() != "<colorbar>"]) == rows * 2


def _corrupt(run: Path, how: str) -> None:
    best = run / "checkpoints" / "best.pt"
    if how == "truncated":
        best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    elif how == "garbage":
        best.write_bytes(os.urandom(4096))
    elif how == "no checkpoints":
        shutil.rmtree(run / "checkpoints")
    elif how == "other config":
        (run / "config.yaml").write_text(
            (run / "config.yaml").read_text().replace("d_model: 64", "d_model: 32"))
    elif how == "other vocabulary":
        pairs = datasets.Dataset.from_dict({"src": SENTENCES * 20, "tgt": SENTENCES[::-1] * 20})
        train_tokenizer(pairs, DataConfig(vocab_size=60, byte_fallback=False), run / "tokenizer")
    elif how == "broken tokenizer":
        (run / "tokenizer" / "spm.model").write_bytes(b"not a model")
    elif how == "weights":
        state = checkpoint.load(best)
        del state["model"]["decoder_norm.weight"]
        checkpoint.save(state, best)


@pytest.mark.parametrize("how, message", [
    ("truncated", "truncated or corrupt"), ("garbage", "truncated or corrupt"),
    ("no checkpoints", "has no checkpoints/best.pt"), ("other config", "model.d_model 64 vs 32"),
    ("other vocabulary", "different vocabulary"), ("broken tokenizer", "does not load"),
    ("weights", "decoder_norm.weight"),
])
def test_a_bad_run_folder_is_one_error_line(run_copy, how, message):
    _corrupt(run_copy, how)
    assert_user_error(run_copy, ["translate", run_copy, SENTENCES[0]], message)


def test_bad_input_is_one_error_line_and_changes_nothing(tiny_run, tmp_path):
    bad = tmp_path / "bad.de"
    bad.write_bytes(b"Ein Hund.\nein \xff Hund\n")
    output = tmp_path / "out.en"
    output.write_text("keep me\n")
    cases = [
        (["translate", tmp_path / "no-such-run", "Hallo"], "does not exist"),
        (["translate", tiny_run, "--input", bad, "--output", output], "line 2: not UTF-8"),
        (["translate", tiny_run, "Hallo", "--input", bad], "not both"),
        (["translate", tiny_run, "a", "b", "--attention", tmp_path / "a.png"], "exactly one TEXT"),
        (["translate", tiny_run, "--checkpoint", tmp_path / "no.pt", "Hallo"], "no checkpoint at"),
    ]
    if not torch.cuda.is_available():
        cases.append((["translate", tiny_run, "--device", "cuda", "Hi"], "CUDA is not available"))
    for args, message in cases:
        assert_user_error(tiny_run, args, message)
    piped = ["translate", tiny_run, "--output", output]
    assert_user_error(tiny_run, piped, "stdin, line 2: not UTF-8", input=b"Hallo\n\xfe\n")
    assert output.read_text() == "keep me\n" and not (tmp_path / "a.png").exists()
