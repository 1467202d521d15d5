"""Runs at a fixed number of updates, for experiments that compare settings (heads, scaling).

Every run is the `quick` preset with no time budget and `train.max_steps` updates (the linear
schedule decays over them), so a busy machine changes how long a run takes, not its result. One
tokenization serves every run (copied into each folder); runs train in parallel jobs of one
thread each; a run that was stopped resumes, a finished one is kept. Each run keeps a snapshot of
its weights at every validation (train.average_last), so attention can be studied as it forms;
every figure is read from last.pt, the weights after exactly `steps` updates.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SNAPSHOTS = 8  # validations kept: every one of 1,200 updates at quick's eval_every 150


def fixed_sets(steps: int, seed: int, extra: list[str]) -> list[str]:
    sets = ["train.max_time=null", f"train.max_steps={steps}", f"train.seed={seed}",
            f"train.average_last={SNAPSHOTS}", "train.num_threads=1", *extra]
    return [arg for item in sets for arg in ("--set", item)]


def train_all(out: Path, runs: dict[str, list[str]], steps: int, seed_of: dict[str, int],
              jobs: int, preset: str = "quick") -> None:
    """Train every run `name -> [key=value, ...]` into out/name (skipping finished ones)."""
    shared = out / "_tokenized"
    if not (shared / "data").is_dir():
        subprocess.run(["mha", "tokenize", preset, "--set", f"run_dir={shared}"], check=True)

    def one(name: str) -> None:
        run = out / name
        if (out / f"{name}.done").exists():
            return
        if not (run / "data").is_dir():
            run.mkdir(parents=True, exist_ok=True)
            for part in ("tokenizer", "data"):
                shutil.copytree(shared / part, run / part, dirs_exist_ok=True)
        resume = ["--resume"] if (run / "checkpoints" / "last.pt").exists() else []
        args = ["mha", "train", preset, "--set", f"run_dir={run}",
                *fixed_sets(steps, seed_of[name], runs[name]), *resume]
        log_path = out / f"{name}.train.log"
        with open(log_path, "a", encoding="utf-8") as log:
            done = subprocess.run(args, check=False, stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
        if done.returncode:
            last = log_path.read_text().strip().splitlines()[-1:]
            raise SystemExit(f"{name}: training failed ({' '.join(last)}); log: {log_path}")
        (out / f"{name}.done").write_text("trained\n")
        print(f"{name}: trained", flush=True)

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, runs))


def test_eval(run: Path) -> dict:
    """`mha eval` of last.pt on the test split (greedy); cached in the run's eval folder."""
    cached = run / "eval" / "test.last.json"
    if not cached.exists():
        done = subprocess.run(["mha", "eval", str(run), "--checkpoint", "last", "--json",
                               "--output", str(run / "eval" / "test.last.hyp")],
                              check=True, capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        cached.write_text(done.stdout.strip().splitlines()[-1])
    return json.loads(cached.read_text())


def validations(run: Path) -> list[dict]:
    """The run's validation records from metrics.jsonl, in order."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "val_loss" in r and "averaged" not in r]
