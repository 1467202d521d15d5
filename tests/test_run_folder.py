"""One writer per run folder; a refused command leaves the folder as it found it; an empty
corpus file is one clean line."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mha.cli.app import app
from mha.data.runlock import RunBusyError, run_lock
from mha.inference import checkpoint

TINY = ["data.vocab_size=200", "model.d_model=32", "model.heads=2", "model.d_ff=64",
        "train.batch_tokens=400", "train.warmup_steps=2", "train.max_steps=4",
        "train.eval_every=2", "decode.max_len_a=0.5", "decode.max_len_b=4"]


def invoke(*args: str | Path):
    return CliRunner().invoke(app, [str(a) for a in args])


def sets(run: Path, corpus: Path, *overrides: str) -> list[str]:
    keys = [f"run_dir={run}", f"data.corpus={corpus}", *TINY, *overrides]
    return [part for key in keys for part in ("--set", key)]


@pytest.fixture(scope="module")
def trained(small_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    result = invoke("train", "tiny", *sets(run, small_corpus))
    assert result.exit_code == 0, result.output
    return run


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def start_training(run: Path, corpus: Path, *overrides: str) -> subprocess.Popen:
    """`mha train --resume` in another process, returned once it holds the run's lock."""
    process = subprocess.Popen(
        [sys.executable, "-m", "mha.cli", "train", "tiny", *sets(run, corpus, *overrides),
         "--resume"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    wait_for(lambda: f'"pid": {process.pid},' in (run / ".lock").read_text(), process)
    return process


def wait_for(condition, process: subprocess.Popen) -> None:
    """Poll `condition` every 20 ms while `process` runs (two minutes at most)."""
    deadline = time.monotonic() + 120
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the condition never came: {process.communicate()[1][-2000:]}")
        time.sleep(0.02)


def trained_past(run: Path, step: int):
    metrics = run / "metrics.jsonl"
    return lambda: f'{{"step": {step}, "loss"' in metrics.read_text()


def test_a_second_writer_is_refused_while_the_first_runs_and_finishes(
        trained, small_corpus, tmp_path):
    run = Path(shutil.copytree(trained, tmp_path / "run"))
    first = start_training(run, small_corpus, "train.max_steps=100000", "train.eval_every=50")
    try:
        for command in (["train", "tiny", *sets(run, small_corpus), "--resume"],
                        ["tokenize", "tiny", *sets(run, small_corpus)],
                        ["export", run, "--to", "ctranslate2"]):
            result = invoke(*command)
            assert result.exit_code == 2, result.output
            assert result.stderr.startswith(f"error: run folder {run} is in use by `mha train` "
                                            f"(process {first.pid}, started "), result.stderr
        assert invoke("eval", run, "--split", "val").exit_code == 0  # result files take no lock
        wait_for(trained_past(run, 10), first)  # past setup: its signal handlers are in place
    finally:
        first.send_signal(signal.SIGTERM)  # a graceful stop: it saves last.pt and exits
    assert first.wait(timeout=120) == 128 + signal.SIGTERM, first.communicate()[1][-2000:]
    assert checkpoint.load(run / "checkpoints" / "last.pt")["step"] > 4


def test_a_killed_writers_lock_never_blocks(trained, small_corpus, tmp_path):
    run = Path(shutil.copytree(trained, tmp_path / "run"))
    first = start_training(run, small_corpus, "train.max_steps=100000", "train.eval_every=50")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    step = checkpoint.load(run / "checkpoints" / "last.pt")["step"]
    result = invoke("train", "tiny", *sets(run, small_corpus, f"train.max_steps={step + 2}"),
                    "--resume")
    assert result.exit_code == 0, result.output
    assert checkpoint.load(run / "checkpoints" / "last.pt")["step"] == step + 2


@pytest.mark.parametrize("overrides", [["model.d_model=64"], ["train.lr=0.5"]])
def test_a_refused_resume_leaves_every_file_byte_identical(
        overrides, trained, small_corpus, tmp_path):
    run = Path(shutil.copytree(trained, tmp_path / "run"))
    before = contents(run)
    result = invoke("train", "tiny", *sets(run, small_corpus, *overrides), "--resume")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: cannot resume: the config differs")
    assert contents(run) == before


def test_a_refused_new_run_and_a_busy_folder_change_nothing(trained, small_corpus, tmp_path):
    run = Path(shutil.copytree(trained, tmp_path / "run"))
    before = contents(run)
    result = invoke("train", "tiny", *sets(run, small_corpus))
    assert result.exit_code == 2 and "already holds a run" in result.stderr
    with run_lock(run, "test"):
        held = contents(run)
        result = invoke("train", "tiny", *sets(run, small_corpus), "--resume")
        assert result.exit_code == 2 and "is in use by `mha test`" in result.stderr
        assert contents(run) == held
        with pytest.raises(RunBusyError), run_lock(run, "another"):
            pass
    assert contents(run) == {**before, ".lock": held[".lock"]}


@pytest.mark.parametrize(("role", "name"), [("train", "train.en"), ("val", "val.de"),
                                            ("test", "test_2016_flickr.en")])
def test_an_empty_corpus_file_is_one_clean_line(role, name, small_corpus, tmp_path):
    corpus = Path(shutil.copytree(small_corpus, tmp_path / "corpus"))
    (corpus / name).write_bytes(b"")
    run = tmp_path / "run"
    result = invoke("tokenize", "tiny", *sets(run, corpus))
    assert result.exit_code == 2, result.output
    split = name.rsplit(".", 1)[0]
    assert result.stderr == (f"error: the {role} split ({split!r}): {corpus / name} has no "
                             "lines (expected a sentence a line)\n")
    assert not run.exists()  # the refused command made it, and leaves nothing behind


def test_a_run_dir_that_is_a_file_is_one_clean_line(small_corpus, tmp_path):
    taken = tmp_path / "a_file"
    taken.write_text("mine")
    result = invoke("tokenize", "tiny", *sets(taken, small_corpus))
    assert result.exit_code == 2, result.output
    assert result.stderr == (f"error: run_dir {taken} cannot hold a run: File exists (expected "
                             "a folder this user can write)\n")
    assert taken.read_text() == "mine"
