"""`mha compare` and the scores `mha eval` leaves for it: table, picture, page, bad input."""

from __future__ import annotations

import json
import re
import shutil
import statistics
from pathlib import Path

import pytest
from helpers import assert_user_error, invoke, make_tiny_run

from mha.data.tokenizer import Tokenizer
from mha.model.info import parameter_count
from mha.training.compare import read_run
from mha.training.monitor import read_metrics

pytestmark = pytest.mark.usefixtures("_one_thread")  # one torch thread: the cores are shared

TRAIN = ["train.max_steps=12", "train.warmup_steps=4", "train.eval_every=4", "train.log_every=2",
         "decode.max_len_a=0.5", "decode.max_len_b=4"]


@pytest.fixture(scope="module")
def trained(small_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run (validated at steps 4, 8, 12), scored by `mha eval`."""
    run = make_tiny_run(tmp_path_factory.mktemp("compare") / "h2", small_corpus, *TRAIN)
    assert invoke("eval", run).exit_code == 0
    return run


@pytest.fixture
def other(trained: Path, tmp_path: Path) -> Path:
    """A copy of the run with one head, validated at steps 4 and 8 only, never scored on test;
    its last line is checkpoint averaging's, which has no elapsed time."""
    run = Path(shutil.copytree(trained, tmp_path / "h1"))
    shutil.rmtree(run / "eval")
    config = run / "config.yaml"
    config.write_text(re.sub(r"heads: \d+", "heads: 1", config.read_text()))
    records = [{"step": s, "loss": 5.0, "elapsed": s / 10, "tokens_per_s": speed}
               for s, speed in ((2, 100), (4, 300), (6, 200))]
    records += [{"step": 4, "val_loss": 5.5, "val_bleu": 1.5, "elapsed": 30.0},
                {"step": 8, "val_loss": 5.0, "val_bleu": 3.25, "elapsed": 90.0},
                {"step": 8, "averaged": 2, "averaged_val_loss": 5.1, "averaged_val_bleu": 3.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def table(stdout: str) -> list[dict[str, str]]:
    lines = stdout.splitlines()[:-1]  # the last line names the picture
    header, *rows = [re.split(r" {2,}", line) for line in lines]
    return [dict(zip(header, row)) for row in rows]


def test_compare_tabulates_and_draws_the_runs(trained, other, tmp_path):
    picture = tmp_path / "compare.png"
    result = invoke("compare", trained, other, "--output", picture)
    assert result.exit_code == 0, result.output
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first, second = table(result.stdout)
    records = read_metrics(trained / "metrics.jsonl")
    validations = [r for r in records if "val_bleu" in r]
    speed = statistics.median(r["tokens_per_s"] for r in records if "tokens_per_s" in r)
    minutes = max(r["elapsed"] for r in records) / 60
    assert [r["step"] for r in validations] == [4, 8, 12]
    at_8 = next(r["val_bleu"] for r in validations if r["step"] == 8)
    best = max(validations, key=lambda r: r["val_bleu"])
    test_bleu = json.loads((trained / "eval" / "test.greedy.json").read_text())["bleu"]
    tokenizer = Tokenizer.load(trained / "tokenizer")
    params = parameter_count(read_run(trained).cfg.model, tokenizer.src_vocab_size,
                             tokenizer.tgt_vocab_size)
    assert first == {
        "run": str(trained), "parameters": f"{params / 1e6:.2f}M", "h": "2", "d_k": "32",
        "layers": "1+1", "updates": "12", "tokens/s": f"{speed:,.0f}", "minutes": f"{minutes:.1f}",
        "best val BLEU (step)": f"{best['val_bleu']:.2f} ({best['step']})",
        "val BLEU at step 8": f"{at_8:.2f}", "test BLEU": f"{test_bleu:.2f} (greedy)"}
    assert second == {
        "run": str(other), "parameters": f"{params / 1e6:.2f}M", "h": "1", "d_k": "64",
        "layers": "1+1", "updates": "8", "tokens/s": "200", "minutes": "1.5",
        "best val BLEU (step)": "3.25 (8)", "val BLEU at step 8": "3.25", "test BLEU": "-"}


def test_compare_writes_a_page_with_the_picture_and_the_table(trained, other, tmp_path):
    page = tmp_path / "compare.html"
    result = invoke("compare", trained, other, "--output", page)
    assert result.exit_code == 0, result.output
    text = page.read_text(encoding="utf-8")
    assert 'src="data:image/png;base64,' in text and "val BLEU at step 8" in text
    assert str(other) in text


def test_bad_compare_input_is_one_error_line_and_writes_nothing(trained, other, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    picture = tmp_path / "c.png"
    (other / "metrics.jsonl").write_text('{"step": 1, "loss": 2}\nnot json\n')
    cases = [
        ([empty], picture, "is not a run folder: it has no config.yaml or metrics.jsonl"),
        ([tmp_path / "missing"], picture, f"run folder {tmp_path / 'missing'} does not exist"),
        ([trained], tmp_path / "no" / "c.png", "does not exist"),
        ([trained], tmp_path / "c.pdf", "--output must end in .png or .html"),
        ([trained, other], picture, "metrics.jsonl, line 2: not a metrics record"),
    ]
    for runs, output, message in cases:
        assert_user_error(trained, ["compare", *runs, "--output", output], message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "h1"]
