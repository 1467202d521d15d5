"""Two processes under torchrun: an agreed time budget, one plan for the linear decay, and an
exact resume with a dropout stream per rank. Each launch has a 60-second limit, so a hang fails
instead of waiting for gloo's 30-minute timeout."""

from __future__ import annotations

import json
import signal

import torch
from helpers import completed, finish, losses, tiny, torchrun, wait_for_step, write_config


def test_ranks_agree_on_the_time_budget(tmp_path, small_corpus):
    # rank 1's clock runs 50 times fast: alone, it would stop while rank 0 waits in an
    # all-reduce for it; agreed, the larger clock stops both at the same update
    config = write_config(tiny(tmp_path / "run", small_corpus, "train.max_steps=100000",
                               "train.max_time=10s"), tmp_path / "c.yaml")
    stderr = completed(config, tmp_path, "--fast-clock-rank", "1")
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0 == rank1
    assert rank0["elapsed"] >= 10 and rank0["step"] < 100000
    assert f"stopped at step {rank0['step']} (max_time 10s)" in stderr


def test_ranks_take_rank_0s_plan_for_the_linear_decay(tmp_path, small_corpus):
    # rank 1 would plan 14 updates, rank 0 plans 10: both must stop at 10 with equal weights
    config = write_config(tiny(tmp_path / "run", small_corpus, "train.schedule=linear",
                               "train.max_time=1h", "train.warmup_steps=4", "train.eval_every=4",
                               "train.max_steps=100"), tmp_path / "c.yaml")
    stderr = completed(config, tmp_path, "--plans", "10,14")
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0 == rank1 and rank0["plan"] == [4, 10] and rank0["step"] == 10
    assert "the 10 updates planned for max_time are done" in stderr
    weights0, weights1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for name, tensor in weights0.items():
        assert torch.equal(tensor, weights1[name]), name


def test_sigint_and_resume_equal_an_uninterrupted_two_process_run(tmp_path, small_corpus):
    run = tmp_path / "run"
    config = write_config(tiny(run, small_corpus, "train.max_steps=100000"), tmp_path / "c.yaml")
    process = torchrun(config, tmp_path)
    wait_for_step(run, 3, process)
    process.send_signal(signal.SIGINT)  # torchrun passes it on to both workers
    stderr = finish(process)
    assert "--resume" in stderr, stderr[-3000:]
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    stopped = saved["step"]
    assert stopped >= 3
    rank0_rng, rank1_rng = saved["rng"]  # one dropout stream per rank
    assert not torch.equal(rank0_rng["torch"], rank1_rng["torch"])

    steps = f"train.max_steps={stopped + 3}"
    completed(write_config(tiny(run, small_corpus, steps), tmp_path / "more.yaml"), tmp_path,
              "--resume")
    straight = tmp_path / "straight"
    completed(write_config(tiny(straight, small_corpus, steps), tmp_path / "s.yaml"), tmp_path)
    expected, got = losses(straight), losses(run)
    assert sorted(got) == list(range(1, stopped + 4))
    for step in expected:
        assert abs(expected[step] - got[step]) < 1e-6, step
