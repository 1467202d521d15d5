"""Crash safety: SIGKILL `mha train` at random moments, resume each time, and count what is lost.

    python bench/kill_resume.py [--kills 20] [--seed 0] [--data-dir ../shared/data/multi30k]

A small run (the tiny preset on the first --lines training pairs of Multi30k, a validation and a
checkpoint every --eval-every updates, the last 2 kept for averaging) is started and killed with
SIGKILL after a random delay (seeded), then started again with --resume (plain when no last.pt
exists yet), --kills times. After each kill: every checkpoint file must load, the temporary files
a killed write left are listed (the next start must remove them), and the updates lost are the
last logged step minus last.pt's step (for a start that got as far as training). Then the run
finishes, and every loss that any of its pieces logged is compared to an uninterrupted run of
the same config (equal to 1e-6).
Prints a markdown table; exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mha.inference import checkpoint

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def small_corpus(data_dir: Path, folder: Path, lines: int) -> Path:
    """Plain {split}.{lang} files: `lines` training pairs, 100 validation and test pairs."""
    folder.mkdir(parents=True)
    for split, count in (("train", lines), ("val", 100), ("test_2016_flickr", 100)):
        for lang in ("de", "en"):
            with gzip.open(data_dir / f"{split}.{lang}.gz", "rt", encoding="utf-8") as file:
                text = "".join(line for _, line in zip(range(count), file))
            (folder / f"{split}.{lang}").write_text(text, encoding="utf-8")
    return folder


def mha(*args: str, log: Path) -> subprocess.Popen:
    with log.open("a") as stderr:
        return subprocess.Popen([sys.executable, "-m", "mha.cli", *args], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=stderr,
                                env=ENV)


def logged_losses(run: Path) -> dict[int, float]:
    """step -> loss of metrics.jsonl (a line cut short by the kill is left out)."""
    path, losses = run / "metrics.jsonl", {}
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "loss" in record:
            losses[record["step"]] = record["loss"]
    return losses


def unreadable_checkpoints(run: Path) -> list[str]:
    bad = []
    for path in sorted((run / "checkpoints").glob("*.pt")):
        try:
            load = checkpoint.load_weights if path.name.startswith("weights_") else checkpoint.load
            load(path)
        except Exception as error:  # noqa: BLE001 - any failure to load is what we count
            bad.append(f"{path.name} ({error})")
    return bad


def kill_once(config: Path, run: Path, delay: float, log: Path) -> dict:
    """Start (resuming when last.pt exists), SIGKILL after `delay` s; what the run folder holds."""
    last = run / "checkpoints" / "last.pt"
    resume = last.is_file()
    process = mha("train", str(config), *(["--resume"] * resume), log=log)
    time.sleep(delay)  # a bench: the random moment is the point
    exited = process.poll()
    process.send_signal(signal.SIGKILL)
    process.wait()
    losses = logged_losses(run)
    saved = checkpoint.load(last)["step"] if last.is_file() else 0
    started = "process(es) on" in log.read_text()  # logged once set up: leftovers removed
    return {"resume": resume, "exited": exited, "losses": losses, "saved": saved,
            "last_step": max(losses, default=0), "started": started,
            "left": sorted(run.glob("**/.*.tmp")), "unreadable": unreadable_checkpoints(run)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--min-delay", type=float, default=3.0)
    parser.add_argument("--max-delay", type=float, default=20.0)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared/data/multi30k")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="kill_resume_"))
    corpus = small_corpus(args.data_dir, work / "corpus", args.lines)
    run = work / "run"
    config = work / "config.yaml"
    settings = [f"run_dir={run}", f"data.corpus={corpus}", "data.vocab_size=500",
                "train.max_steps=100000", "train.warmup_steps=5",
                f"train.eval_every={args.eval_every}", "train.log_every=1",
                "train.average_last=2", "decode.batch_size=100", "decode.max_len_a=0.5",
                "decode.max_len_b=4"]
    config.write_text(dump_config(settings))
    subprocess.run([sys.executable, "-m", "mha.cli", "tokenize", str(config)], check=True,
                   cwd=ROOT, capture_output=True)

    print("| kill | delay s | resumed | last logged step | last.pt step | updates lost "
          "| temporary files left | gone after the next start | unreadable checkpoints |")
    print("|---:|---:|---|---:|---:|---:|---|---|---|")
    rows, pieces, failures = [], [], []
    for kill in range(1, args.kills + 1):
        delay = rng.uniform(args.min_delay, args.max_delay)
        row = kill_once(config, run, delay, work / f"train_{kill}.log")
        if rows:  # the start just killed had to remove what the kill before left
            previous = rows[-1]
            gone = not any(p.exists() for p in previous["left"])
            previous["gone"] = ("-" if not previous["left"] else "yes" if gone
                                else "no" if row["started"] else "not started")
            if previous["gone"] == "no":
                failures.append(f"kill {kill - 1}: temporary files survived the next start")
            print_row(previous)
        row.update(kill=kill, delay=delay, gone="?")
        rows.append(row)
        pieces.append(row["losses"])
        if row["unreadable"]:
            failures.append(f"kill {kill}: unreadable checkpoints {row['unreadable']}")
        if row["exited"] is not None:
            failures.append(f"kill {kill}: the run exited ({row['exited']}) before the kill; "
                            f"see {work}/train_{kill}.log")
    final_steps = max(rows[-1]["saved"], 5) + args.eval_every
    done = subprocess.run([sys.executable, "-m", "mha.cli", "train", str(config), "--resume",
                           "--set", f"train.max_steps={final_steps}"], check=False, cwd=ROOT,
                          capture_output=True, text=True, env=ENV)
    last_row = rows[-1]
    last_row["gone"] = "-" if not last_row["left"] else (
        "yes" if not any(p.exists() for p in last_row["left"]) else "no")
    print_row(last_row)
    if done.returncode:
        failures.append(f"the final --resume failed: {done.stderr[-500:]}")
    pieces.append(logged_losses(run))

    straight = work / "straight"
    subprocess.run([sys.executable, "-m", "mha.cli", "train", str(config), "--set",
                    f"run_dir={straight}", "--set", f"train.max_steps={final_steps}"],
                   cwd=ROOT, check=True, capture_output=True, env=ENV)
    expected = logged_losses(straight)
    differences = [abs(loss - expected[step]) for piece in pieces for step, loss in piece.items()]
    worst = max(differences, default=0.0)
    lost = [r["last_step"] - r["saved"] for r in rows if r["started"]] or [0]
    print()
    print(f"most updates lost: {max(lost)} (train.eval_every {args.eval_every}); "
          f"losses compared with an uninterrupted run of {final_steps} updates: "
          f"{len(differences)} values from {len(pieces)} pieces, largest difference {worst:.1e}")
    if max(lost) > args.eval_every:
        failures.append(f"{max(lost)} updates lost, more than train.eval_every")
    if worst > 1e-6:
        failures.append(f"a resumed loss differs from the uninterrupted run by {worst:.1e}")
    for failure in failures:
        print(f"FAIL: {failure}")
    print(f"work folder: {work}")
    sys.exit(1 if failures else 0)


def dump_config(settings: list[str]) -> str:
    from mha.configs.schema import dump, load_config

    return dump(load_config("tiny", settings))


def print_row(row: dict) -> None:
    left = ", ".join(p.name for p in row["left"]) or "-"
    lost = row["last_step"] - row["saved"] if row["started"] else "- (not started)"
    print(f"| {row['kill']} | {row['delay']:.1f} | {'yes' if row['resume'] else 'no'} "
          f"| {row['last_step']} | {row['saved']} | {lost} | {left} "
          f"| {row['gone']} | {', '.join(row['unreadable']) or '-'} |", flush=True)


if __name__ == "__main__":
    main()
