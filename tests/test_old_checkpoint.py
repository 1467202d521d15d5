"""A checkpoint written before the layout move still loads and translates the same."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from mha.inference import checkpoint
from mha.inference.run import load_model
from mha.inference.translate import MhaEngine, translate_lines
from mha.training.state import set_rng_state

FIXTURE = Path(__file__).parent / "fixtures" / "run_before_layout"


@pytest.fixture(scope="module")
def old_run(tmp_path_factory: pytest.TempPathFactory):
    run_dir = tmp_path_factory.mktemp("old") / "run"
    shutil.copytree(FIXTURE, run_dir)
    return load_model(run_dir, "best", "cpu")


def test_old_checkpoint_gives_the_same_logits(old_run):
    model, _, _ = old_run
    saved = torch.load(FIXTURE / "logits.pt")
    with torch.no_grad():
        logits = model(saved["src_ids"], saved["tgt_in"])
    torch.testing.assert_close(logits, saved["logits"], atol=1e-6, rtol=0)


@pytest.mark.parametrize(("beam", "expected"), [(1, "expected.txt"), (3, "expected_beam3.txt")])
def test_old_checkpoint_translates_the_same(old_run, beam: int, expected: str):
    model, tokenizer, cfg = old_run
    sources = (FIXTURE / "src.txt").read_text(encoding="utf-8").splitlines()
    outputs = list(translate_lines(MhaEngine(model, tokenizer, cfg.decode), sources,
                                   batch_size=2, beam=beam))
    assert outputs == (FIXTURE / expected).read_text(encoding="utf-8").splitlines()


def test_old_checkpoint_gives_its_one_rng_state_to_every_rank():
    state = checkpoint.load(FIXTURE / "checkpoints" / "best.pt")
    assert state["format"] == "mha-checkpoint-1" and len(state["rng"]) == 1
    for rank in (0, 1):
        set_rng_state(state["rng"], rank)
        assert torch.equal(torch.get_rng_state(), state["rng"][0]["torch"])
