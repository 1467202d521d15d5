"""Run under torchrun by test_train: trains, then each rank saves its final weights."""

import logging
import os
import sys
from pathlib import Path

import torch

from mha.configs.schema import load_config
from mha.training.loop import train

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config, out = sys.argv[1], Path(sys.argv[2])
    model = train(load_config(config)).model
    torch.save(model.state_dict(), out / f"rank{os.environ['RANK']}.pt")
