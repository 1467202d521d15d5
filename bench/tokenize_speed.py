"""Tokenize speed and peak memory: `mha tokenize` on Multi30k de-en and on 1M repeated pairs.

Each run is the real command in a fresh process, so its peak RSS (from os.wait4) is its own.
The 1M-pair corpus is Multi30k's training set repeated, written to a temporary folder with the
real val and test splits beside it. Every run gets a fresh Hugging Face datasets cache.

    python bench/tokenize_speed.py [--pairs 1000000] [--data-dir ../shared/data/multi30k]
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/multi30k"


def run_tokenize(config: str, overrides: list[str], env: dict[str, str]) -> dict:
    """Run `mha tokenize` in a child process: wall seconds, prepare seconds, peak RSS, report."""
    command = [sys.executable, "-m", "mha.cli", "tokenize", config]
    command += [item for override in overrides for item in ("--set", override)]
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    output = child.stdout.read().decode()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {child.returncode}")
    run_dir = next(o.split("=", 1)[1] for o in overrides if o.startswith("run_dir="))
    report = json.loads((Path(run_dir) / "data" / "report.json").read_text())
    prepare_s = float(re.search(r"in ([\d.]+) s$", output, re.MULTILINE)[1])
    return {"wall": wall, "prepare": prepare_s, "rss_mib": usage.ru_maxrss / 1024,
            "pairs": sum(split["pairs"] for split in report["splits"].values()),
            "reused": "reused the cache" in output, "stages": report["stage_seconds"]}


def repeat_corpus(data_dir: Path, pairs: int, folder: Path) -> None:
    """Multi30k de/en train repeated to `pairs` lines as plain files; val and test as they are."""
    for lang in ("de", "en"):
        with gzip.open(data_dir / f"train.{lang}.gz", "rt", encoding="utf-8") as file:
            lines = file.readlines()
        with open(folder / f"train.{lang}", "w", encoding="utf-8") as out:
            out.writelines(itertools.islice(itertools.cycle(lines), pairs))
        for split in ("val", "test_2016_flickr"):
            shutil.copy(data_dir / f"{split}.{lang}.gz", folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1_000_000,
                        help="training pairs of the big run")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="Multi30k .gz files")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="mha-bench-") as temp:
        temp = Path(temp)
        env = {**os.environ, "HF_DATASETS_CACHE": str(temp / "hf")}
        big = temp / "big"
        big.mkdir()
        repeat_corpus(args.data_dir, args.pairs, big)
        cases = [  # the big corpus: Multi30k train repeated to args.pairs, plus val and test
            ("multi30k de-en", [f"data.data_dir={args.data_dir}", f"run_dir={temp / 'run_m30k'}"]),
            (f"train x{args.pairs / 29000:.1f}",
             [f"data.corpus={big}", f"run_dir={temp / 'run_big'}"]),
        ]
        for name, overrides in cases:
            for _ in ("built", "reused"):
                result = run_tokenize("multi30k_de_en", overrides, env)
                rows.append((name, result))
                print(f"# {name}: {result}", file=sys.stderr, flush=True)

    print(f"mha tokenize (preset multi30k_de_en: joint bpe, vocab 8000, spm_sample 1M per side) on "
          f"{os.cpu_count()} CPU cores, {platform.machine()}, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}")
    header = (f"{'corpus':<22}{'run':<8}{'pairs':>11}{'wall s':>8}{'prepare s':>11}{'read':>7}"
              f"{'spm':>7}{'encode':>8}{'pairs/s':>9}{'peak RSS MiB':>14}")
    print(header)
    print("-" * len(header))
    for name, r in rows:
        if r["reused"]:
            stages, speed = ("-", "-", "-"), "-"
        else:
            stages = tuple(f"{r['stages'][key]:.1f}" for key in ("corpus", "tokenizer", "encode"))
            speed = f"{r['pairs'] / r['prepare']:,.0f}"
        print(f"{name:<22}{'reused' if r['reused'] else 'built':<8}{r['pairs']:>11,}"
              f"{r['wall']:>8.1f}{r['prepare']:>11.1f}{stages[0]:>7}{stages[1]:>7}{stages[2]:>8}"
              f"{speed:>9}{r['rss_mib']:>14,.0f}")
    print("wall s: the whole command, interpreter start included. prepare s: read the corpus "
          "(read), train SentencePiece (spm), encode and save every split (encode), or load the "
          "cache (reused). pairs/s: pairs over prepare s. peak RSS: the command's process, "
          "os.wait4.")

if __name__ == "__main__":
    main()
