"""Crash safety: kill -9 at chosen moments, a full disk, a killed write's leftovers, NaN weights.

The kill points are conditions seen in the run folder (a metrics line, a new last.pt), polled
with short waits: no test sleeps a fixed time to hit a moment.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import losses, tiny, write_config
from typer.testing import CliRunner

from mha.cli.app import app
from mha.data.files import DataError
from mha.inference import checkpoint
from mha.inference.checkpoint import CheckpointError
from mha.training.loop import train
from mha.training.monitor import read_metrics


def test_a_checkpoint_with_nan_weights_is_refused_and_the_previous_one_kept(tmp_path):
    path = tmp_path / "last.pt"
    good = {"step": 1, "config": {}, "tokenizer": {}, "model": {"w": torch.ones(2)}}
    checkpoint.save(good, path)
    before = path.read_bytes()
    bad = {**good, "step": 2, "model": {"w": torch.tensor([1.0, float("nan")])}}
    with pytest.raises(CheckpointError, match=r"refusing to write .*last.pt: w holds NaN or inf"):
        checkpoint.save(bad, path)
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]


def test_a_killed_writes_leftovers_are_removed_at_the_next_start_and_never_read(
        tmp_path, small_corpus):
    run = tmp_path / "run"
    train(tiny(run, small_corpus, "train.max_steps=5", "train.eval_every=5"))
    leftovers = [run / "checkpoints" / ".last.pt.k1ll3d.tmp", run / ".metrics.jsonl.x7.tmp",
                 run / ".config.yaml.q2.tmp"]
    for leftover in leftovers:
        leftover.write_bytes(b"half a file")  # not loadable: reading it would fail
    train(tiny(run, small_corpus, "train.max_steps=6", "train.eval_every=5"), resume=True)
    assert not any(leftover.exists() for leftover in leftovers)
    assert sorted(losses(run)) == [1, 2, 3, 4, 5, 6]


def test_a_metrics_line_cut_short_by_a_kill_is_dropped_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 5.0}\n{"step": 2, "lo', encoding="utf-8")
    assert read_metrics(path, drop_cut_last_line=True) == [{"step": 1, "loss": 5.0}]
    with pytest.raises(DataError, match="line 2: not a metrics record"):
        read_metrics(path)  # mha compare reads run folders as they are
    path.write_text('{"step": 1, "lo\n{"step": 2, "loss": 5.0}\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 1: not a metrics record"):
        read_metrics(path, drop_cut_last_line=True)  # only the last line can be cut short


def test_a_full_disk_during_a_checkpoint_write_keeps_the_previous_checkpoint(
        tmp_path, small_corpus, monkeypatch):
    run = tmp_path / "run"
    config = write_config(tiny(run, small_corpus, "train.max_steps=5", "train.eval_every=5"),
                          tmp_path / "c.yaml")
    runner = CliRunner()
    assert runner.invoke(app, ["train", str(config)]).exit_code == 0
    folder = run / "checkpoints"
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    real_save = torch.save

    def full_disk(obj, file, *args, **kwargs):  # half a checkpoint reaches the disk, then ENOSPC
        if isinstance(obj, dict) and obj.get("format") == checkpoint.FORMAT:
            file.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, file, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    result = runner.invoke(app, ["train", str(config), "--resume", "--set", "train.max_steps=6"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    line = result.stderr.splitlines()[-1]  # after the progress bar's last line
    assert [text for text in result.stderr.splitlines() if "error" in text] == [line]
    assert line.startswith(f"error: cannot write {folder}/"), line
    assert line.endswith(".pt: No space left on device (the previous file is kept)"), line
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
    assert checkpoint.load(folder / "last.pt")["step"] == 5


def kill_when(config: Path, resume: bool, condition: Callable[[], bool]) -> None:
    """Start `mha train` and SIGKILL it as soon as `condition()` holds (polled every 20 ms)."""
    log = config.parent / "stderr.txt"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "mha.cli", "train", str(config), *(["--resume"] * resume)],
            stdout=subprocess.DEVNULL, stderr=stderr, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            pytest.fail(f"the kill point never came: {log.read_text()[-3000:]}")
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)


def logged_steps(run: Path) -> list[int]:
    """The steps of metrics.jsonl's update lines, a line cut short by the kill left out."""
    path = run / "metrics.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r["step"] for r in records if "loss" in r]


def validated(run: Path, step: int) -> Callable[[], bool]:
    def seen() -> bool:
        path = run / "metrics.jsonl"
        return path.is_file() and f'"step": {step}, "val_loss"' in path.read_text()
    return seen


def test_kill_9_three_times_then_resume_equals_an_uninterrupted_run(tmp_path, small_corpus):
    run, eval_every = tmp_path / "run", 3
    settings = ["train.max_steps=14", f"train.eval_every={eval_every}", "train.average_last=2"]
    config = write_config(tiny(run, small_corpus, *settings), tmp_path / "c.yaml")
    last = run / "checkpoints" / "last.pt"

    def kill_point(kill: int) -> Callable[[], bool]:
        if kill == 0:  # between two checkpoints
            return lambda: max(logged_steps(run), default=0) >= 4
        if kill == 1:  # just after a new last.pt
            inode = last.stat().st_ino
            return lambda: last.stat().st_ino != inode
        return validated(run, 9)  # amid a validation's writes (curves, snapshot, best, last)

    lost = []
    for kill in range(3):
        condition = kill_point(kill)
        left_before = list(run.glob("**/.*.tmp"))
        kill_when(config, kill > 0, condition)
        assert not any(path.exists() for path in left_before)  # removed by that start
        for path in (run / "checkpoints").glob("*.pt"):
            if path.name.startswith("weights_"):
                torch.load(path)
            else:
                checkpoint.load(path)  # raises CheckpointError if unreadable
        lost.append(max(logged_steps(run)) - checkpoint.load(last)["step"])
    assert max(lost) <= eval_every, lost
    train(tiny(run, small_corpus, *settings), resume=True)
    assert not list(run.glob("**/.*.tmp"))
    train(tiny(tmp_path / "straight", small_corpus, *settings))
    expected, got = losses(tmp_path / "straight"), losses(run)
    assert sorted(got) == list(range(1, 15))
    for step in expected:
        assert abs(expected[step] - got[step]) < 1e-6, step
