"""Training: exact resume, signals, NaN, bad checkpoints, metrics, DDP, and the CLI pipeline."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import losses, tiny, wait_for_step, write_config
from typer.testing import CliRunner

from mha.cli.app import app
from mha.configs.schema import load_config
from mha.inference import checkpoint
from mha.training import compiled as compiled_module
from mha.training.loop import TrainingError, train
from mha.training.monitor import read_metrics
from mha.training.schedule import inverse_sqrt


def test_schedule_warms_up_linearly_then_decays_as_inverse_sqrt():
    assert inverse_sqrt(50, 100) == pytest.approx(0.5)
    assert inverse_sqrt(100, 100) == pytest.approx(1.0)
    assert inverse_sqrt(400, 100) == pytest.approx(0.5)


def test_resumed_run_equals_uninterrupted_run(tmp_path, small_corpus):
    straight = train(tiny(tmp_path / "a", small_corpus, "train.max_steps=12"))
    train(tiny(tmp_path / "b", small_corpus, "train.max_steps=5"))
    resumed = train(tiny(tmp_path / "b", small_corpus, "train.max_steps=12"), resume=True)
    expected, got = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(got) == list(range(1, 13))
    for step in expected:
        assert abs(expected[step] - got[step]) < 1e-6, step
    pairs = zip(straight.model.state_dict().items(), resumed.model.state_dict().values())
    for (name, a), b in pairs:
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
    assert resumed.progress.tgt_tokens == straight.progress.tgt_tokens


def test_metrics_checkpoints_and_curves(tmp_path, small_corpus):
    run = tmp_path / "run"
    train(tiny(run, small_corpus, "train.max_steps=6", "train.eval_every=3",
               "train.average_last=2"))
    records = read_metrics(run / "metrics.jsonl")
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 7))
    assert {"step", "loss", "lr", "src_tokens", "tgt_tokens", "elapsed"} <= set(steps[0])
    assert all(a["tgt_tokens"] < b["tgt_tokens"] for a, b in itertools.pairwise(steps))
    assert [r["step"] for r in records if "val_bleu" in r] == [3, 6]
    assert any("averaged_val_bleu" in r for r in records)
    assert (run / "curves.png").stat().st_size > 0
    assert {p.name for p in (run / "checkpoints").glob("*.pt")} >= {"last.pt", "best.pt"}
    assert load_config(str(run / "config.yaml")) == tiny(
        run, small_corpus, "train.max_steps=6", "train.eval_every=3", "train.average_last=2")


def test_max_time_stops_cleanly(tmp_path, small_corpus):
    done = train(tiny(tmp_path / "run", small_corpus, "train.max_steps=50",
                      "train.max_time=0.001s"))
    assert done.progress.step == 1
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, small_corpus, monkeypatch):
    run = tmp_path / "run"
    cfg = tiny(run, small_corpus, "train.max_steps=20", "train.eval_every=4")
    real = compiled_module.summed_loss  # the eager loss that training_loss hands the loop
    calls = {"n": 0}

    def poisoned(*args, **kwargs):  # training's 7th batch onwards: NaN
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 6 else loss

    last = run / "checkpoints" / "last.pt"
    monkeypatch.setattr(compiled_module, "summed_loss", poisoned)
    with pytest.raises(TrainingError, match=r"loss became nan at step \d+"):
        train(cfg)
    kept = torch.load(last, weights_only=True)
    assert kept["step"] == 4
    assert all(torch.isfinite(v).all() for v in kept["model"].values())


def test_inf_gradient_stops_before_the_weights_and_keeps_the_last_good_checkpoint(
        tmp_path, small_corpus, monkeypatch):
    run = tmp_path / "run"
    cfg = tiny(run, small_corpus, "train.max_steps=20", "train.eval_every=4")
    real = compiled_module.summed_loss  # the eager loss that training_loss hands the loop
    calls = {"n": 0}

    def exploding(*args, **kwargs):  # the 8th update (a validation step): finite loss, inf grads
        calls["n"] += 1
        loss = real(*args, **kwargs)
        if calls["n"] == 8:
            loss.register_hook(lambda grad: grad * float("inf"))
        return loss

    monkeypatch.setattr(compiled_module, "summed_loss", exploding)
    with pytest.raises(TrainingError, match=r"the gradient norm became (inf|nan) at step 8; "):
        train(cfg)
    kept = checkpoint.load(run / "checkpoints" / "last.pt")
    assert kept["step"] == 4
    assert all(torch.isfinite(v).all() for v in kept["model"].values())


def cli_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def test_bad_checkpoints_and_configs_on_resume(tmp_path, small_corpus):
    run = tmp_path / "run"
    config = write_config(tiny(run, small_corpus, "train.max_steps=5"), tmp_path / "c.yaml")
    runner = CliRunner()
    assert runner.invoke(app, ["train", str(config)]).exit_code == 0
    assert "already holds a run" in cli_error(runner.invoke(app, ["train", str(config)]))
    changed = cli_error(
        runner.invoke(app, ["train", str(config), "--resume", "--set", "model.d_ff=32"]))
    assert "model.d_ff (64 in the checkpoint, 32 now)" in changed
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    before = last.read_bytes()
    corrupt = cli_error(runner.invoke(app, ["train", str(config), "--resume"]))
    assert "truncated or corrupt" in corrupt
    assert last.read_bytes() == before
    last.unlink()
    assert "no checkpoint" in cli_error(runner.invoke(app, ["train", str(config), "--resume"]))


def start_training(config: Path, env: dict | None = None, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mha.cli", "train", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, **popen)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_and_resume_continues_exactly(tmp_path, small_corpus, signum):
    run = tmp_path / "run"
    config = write_config(tiny(run, small_corpus, "train.max_steps=100000"), tmp_path / "c.yaml")
    # a job started in the background inherits SIGINT as ignored: the handler must still work
    ignore_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)
    process = start_training(config, preexec_fn=ignore_sigint)
    wait_for_step(run, 3, process, timeout=120)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, stderr[-2000:]
    assert "--resume" in stderr and "Traceback" not in stderr
    stopped = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert stopped >= 3
    train(tiny(run, small_corpus, f"train.max_steps={stopped + 3}"), resume=True)
    train(tiny(tmp_path / "straight", small_corpus, f"train.max_steps={stopped + 3}"))
    expected, got = losses(tmp_path / "straight"), losses(run)
    assert sorted(got) == list(range(1, stopped + 4))
    assert all(abs(expected[s] - got[s]) < 1e-6 for s in expected)


def test_two_processes_match_one_process_on_the_doubled_batch(tmp_path, small_corpus):
    no_dropout = ["model.dropout=0", "model.attention_dropout=0", "train.max_steps=6"]
    config = write_config(tiny(tmp_path / "ddp", small_corpus, *no_dropout), tmp_path / "c.yaml")
    worker = Path(__file__).parent / "ddp_worker.py"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(worker), str(config), str(tmp_path)],
        check=False, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stderr
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    single = train(tiny(tmp_path / "one", small_corpus, *no_dropout, "train.accumulate=2")).model
    # W_K's bias shifts every score of a query equally, so softmax ignores it: its true gradient
    # is zero, and Adam turns the round-off left in it into full-size steps. Compare the rest.
    differing = [name for name, weight in single.state_dict().items()
                 if not name.endswith("w_k.bias")
                 and not torch.allclose(rank0[name], weight, atol=1e-5, rtol=1e-4)]
    assert differing == [], differing
    ddp_losses, single_losses = losses(tmp_path / "ddp"), losses(tmp_path / "one")
    assert all(abs(ddp_losses[s] - single_losses[s]) < 1e-4 for s in single_losses)


def test_cli_tokenize_train_translate_eval(tmp_path, small_corpus):
    run = tmp_path / "run"
    config = write_config(tiny(run, small_corpus, "train.max_steps=30", "train.eval_every=15"),
                          tmp_path / "c.yaml")
    runner = CliRunner()
    for args in (["tokenize", str(config)], ["train", str(config)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    assert "best validation BLEU" in result.output
    translated = runner.invoke(app, ["translate", str(run), "Ein Hund läuft.", "", "Zwei Männer."])
    assert translated.exit_code == 0, translated.output
    lines = translated.stdout.split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[3] == ""
    scored = runner.invoke(app, ["eval", str(run), "--json"])
    assert scored.exit_code == 0, scored.output
    assert {"bleu", "chrf", "signature"} <= set(json.loads(scored.stdout))
