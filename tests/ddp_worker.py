"""Run under torchrun by the tests: trains, then each rank writes its final weights and progress.

python ddp_worker.py CONFIG OUT [--resume] [--fast-clock-rank R] [--plans P0,P1]

--fast-clock-rank R makes rank R's time.perf_counter run 50 times fast: a clock that disagrees
with the others' about how much of train.max_time is spent. --plans P0,P1 makes rank r's linear
schedule plan end at update P_r: ranks that measured different rates.
"""

import argparse
import json
import logging
import os
import time
from pathlib import Path

import torch

from mha.configs.schema import load_config
from mha.training import schedule
from mha.training.loop import train

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("out", type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--fast-clock-rank", type=int, default=None)
    parser.add_argument("--plans", default=None)
    args = parser.parse_args()
    rank = int(os.environ["RANK"])
    if args.fast_clock_rank == rank:
        real_clock = time.perf_counter
        time.perf_counter = lambda: 50 * real_clock()
    if args.plans:
        plan = int(args.plans.split(",")[rank])
        schedule.planned_updates = lambda *_: plan
    trained = train(load_config(args.config), resume=args.resume)
    torch.save(trained.model.state_dict(), args.out / f"rank{rank}.pt")
    progress = {"step": trained.progress.step, "elapsed": trained.progress.elapsed,
                "precision": trained.progress.precision,
                "plan": [trained.progress.plan_start, trained.progress.plan_end]}
    (args.out / f"rank{rank}.json").write_text(json.dumps(progress))
