"""Learning-rate schedules: the linear decay to zero that a time budget plans, and its resume."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import pytest
import torch
from helpers import TINY, losses

from mha.configs.schema import load_config, parse_duration
from mha.inference import checkpoint
from mha.training import schedule
from mha.training.distributed import Distributed
from mha.training.loop import train
from mha.training.monitor import Monitor, read_metrics
from mha.training.schedule import Plan, linear, lr_factor, plan_decay, planned_updates
from mha.training.state import Progress, Update


def test_linear_warms_up_holds_then_reaches_zero_at_the_planned_end():
    plan = Plan(start=20, end=120)
    assert linear(5, 10, plan) == pytest.approx(0.5)
    assert linear(15, 10, plan) == 1.0  # between warmup and the plan's start
    assert linear(70, 10, plan) == pytest.approx(0.5)
    assert linear(120, 10, plan) == 0.0
    assert linear(200, 10, plan) == 0.0
    assert linear(500, 10, Plan()) == 1.0  # not planned yet


def test_planned_updates_count_validations_and_respect_max_steps():
    # 100 s left, 1 s an update, a 10 s validation every 10 updates: 2 s an update in all
    assert planned_updates(50, 100.0, 1.0, 10.0, 10, 10_000) == 100
    assert planned_updates(50, 100.0, 1.0, 10.0, 10, 80) == 80
    assert planned_updates(50, -5.0, 1.0, 0.0, 10, 10_000) == 51


def test_without_a_time_budget_linear_decays_over_max_steps():
    cfg = load_config("tiny", ["train.schedule=linear", "train.max_steps=60",
                               "train.warmup_steps=20"])
    factors = [lr_factor(step, cfg.train, Progress()) for step in (10, 20, 40, 60)]
    assert factors == pytest.approx([0.5, 1.0, 0.5, 0.0])


def test_plan_is_made_once_after_warmup_from_measured_rates():
    cfg = load_config("tiny", ["train.schedule=linear", "train.max_time=10m",
                               "train.warmup_steps=20", "train.max_steps=100000",
                               "train.eval_every=30"])
    progress = Progress(step=10, elapsed=20.0)
    plan_decay(cfg.train, progress, 600.0, Distributed())
    assert progress.plan_end == 0  # still warming up
    progress = Progress(step=30, elapsed=70.0, validation_seconds=10.0)  # 2 s/update, 10 s/val
    plan_decay(cfg.train, progress, 600.0, Distributed())
    end = 30 + math.floor(530 / (2.0 + 10.0 / 30))
    assert (progress.plan_start, progress.plan_end) == (30, end)
    progress.step, progress.elapsed = 120, 299.0
    plan_decay(cfg.train, progress, 600.0, Distributed())
    assert progress.plan_end == end  # kept until half the budget is spent


def test_plan_is_corrected_once_halfway_and_the_rate_stays_continuous():
    cfg = load_config("tiny", ["train.schedule=linear", "train.max_time=10m",
                               "train.warmup_steps=20", "train.max_steps=100000",
                               "train.eval_every=30"])
    progress = Progress(step=30, elapsed=60.0)  # 2 s an update: 300 planned
    plan_decay(cfg.train, progress, 600.0, Distributed())
    assert (progress.plan_start, progress.plan_end, progress.plan_top) == (30, 300, 1.0)
    progress.step, progress.elapsed = 120, 360.0  # the machine slowed: 3 s an update on average
    before = lr_factor(120, cfg.train, progress)
    plan_decay(cfg.train, progress, 600.0, Distributed())
    assert (progress.plan_start, progress.plan_end) == (120, 120 + 240 // 3)
    assert progress.plan_corrected and progress.plan_top == pytest.approx(180 / 270)
    assert lr_factor(120, cfg.train, progress) == pytest.approx(before)
    assert lr_factor(160, cfg.train, progress) == pytest.approx(before / 2)
    assert lr_factor(200, cfg.train, progress) == 0.0
    progress.step, progress.elapsed = 150, 500.0
    plan_decay(cfg.train, progress, 600.0, Distributed())
    assert progress.plan_end == 200  # corrected once only


def test_a_first_plan_made_past_halfway_is_not_corrected_again():
    cfg = load_config("tiny", ["train.schedule=linear", "train.warmup_steps=20",
                               "train.eval_every=30"])
    progress = Progress(step=30, elapsed=400.0)
    plan_decay(cfg.train, progress, 600.0, Distributed())
    assert progress.plan_corrected and progress.plan_top == 1.0
    assert progress.plan_end == 30 + math.floor(200 / (400 / 30))


def budget_run(run_dir, corpus, *overrides):
    return load_config("tiny", [f"run_dir={run_dir}", f"data.corpus={corpus}", *TINY,
                                "train.schedule=linear", "train.max_time=1h",
                                "train.warmup_steps=4", "train.eval_every=4", *overrides])


def test_a_budgeted_run_stops_at_its_plan_and_resumes_on_the_same_curve(
        tmp_path, small_corpus, monkeypatch):
    monkeypatch.setattr(schedule, "planned_updates", lambda *args: 10)
    straight = train(budget_run(tmp_path / "a", small_corpus, "train.max_steps=40"))
    assert straight.progress.step == 10
    train(budget_run(tmp_path / "b", small_corpus, "train.max_steps=6"))
    saved = checkpoint.load(tmp_path / "b" / "checkpoints" / "last.pt")["progress"]
    assert (saved["plan_start"], saved["plan_end"]) == (4, 10)
    monkeypatch.setattr(schedule, "planned_updates", lambda *args: 99)  # must not re-plan
    resumed = train(budget_run(tmp_path / "b", small_corpus, "train.max_steps=40"), resume=True)
    assert resumed.progress.step == 10
    expected, got = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(got) == list(range(1, 11))
    for step in expected:
        assert abs(expected[step] - got[step]) < 1e-6, step
    records = read_metrics(tmp_path / "a" / "metrics.jsonl")
    lrs = {r["step"]: r["lr"] for r in records if "lr" in r}
    assert lrs[4] == pytest.approx(1e-3) and lrs[10] == 0.0 and 0 < lrs[7] < lrs[5]
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_the_quick_preset_fits_five_minutes_with_a_planned_linear_decay(tmp_path, small_corpus):
    cfg = load_config("quick")
    assert parse_duration(cfg.train.max_time) <= 270  # tokenizing and the last validation fit
    assert cfg.train.schedule == "linear" and cfg.train.eval_every >= cfg.train.warmup_steps
    small = load_config("quick", [f"run_dir={tmp_path}", f"data.corpus={small_corpus}",
                                  "data.vocab_size=300", "data.byte_fallback=false",
                                  "train.max_steps=3",
                                  "train.warmup_steps=1"])
    assert train(small).progress.step == 3


def test_the_progress_bar_ends_where_the_run_will(tmp_path):
    cfg = load_config("tiny", ["train.max_steps=1000", "train.log_every=1"])
    update = Update(loss=1.0, tgt_tokens=10, src_tokens=10, slots=20, stop_requested=False)
    budgeted = Monitor(tmp_path, None, cfg.train, max_time=100.0)
    budgeted.report(Progress(step=10, elapsed=20.0), update, 1e-3)  # 2 s an update, 80 s left
    assert budgeted.bar.total == 50
    budgeted.report(Progress(step=20, elapsed=40.0, plan_start=12, plan_end=35), update, 1e-3)
    assert budgeted.bar.total == 35
    (tmp_path / "open").mkdir()
    open_ended = Monitor(tmp_path / "open", None, cfg.train)
    open_ended.report(Progress(step=10, elapsed=20.0), update, 1e-3)
    assert open_ended.bar.total == 1000


def test_log_lines_start_lines_of_their_own_beside_the_bar(tmp_path, small_corpus):
    overrides = [f"run_dir={tmp_path / 'run'}", f"data.corpus={small_corpus}", *TINY,
                 "train.schedule=linear", "train.max_time=1h", "train.max_steps=12",
                 "train.warmup_steps=4", "train.eval_every=4", "train.log_every=1"]
    command = ["train", "tiny", *[arg for o in overrides for arg in ("--set", o)]]
    result = subprocess.run(
        [sys.executable, "-m", "mha.cli", *command], check=False, capture_output=True,
        text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    for message in ("linear schedule:", "stopped at step 12"):
        before = result.stderr[:result.stderr.index(message)]
        assert before.endswith(("\n", "\r")) and re.search(r"\d+/\d+ \[", before), before[-200:]
