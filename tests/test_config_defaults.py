"""One set of defaults: the reference file lists them, presets state only what differs, and a
config stored by an older version keeps meaning what it meant."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from mha.configs.schema import (
    OLDER_MEANING,
    PRESET_DIR,
    Config,
    from_dict,
    load_config,
    presets,
    to_dict,
)
from mha.inference import checkpoint
from mha.inference.run import load_model
from mha.training.optimizer import Optimizer
from mha.training.schedule import inverse_sqrt, lr_factor
from mha.training.state import restore, saved_state

REFERENCE = Path(__file__).parents[1] / "docs" / "config_reference.yaml"
OLD_RUN = Path(__file__).parent / "fixtures" / "run_before_layout"


def flat(tree: dict, prefix: str = "") -> dict:
    """{"model": {"heads": 4}} -> {"model.heads": 4}"""
    out = {}
    for name, item in tree.items():
        out.update(flat(item, f"{prefix}{name}.") if isinstance(item, dict)
                   else {f"{prefix}{name}": item})
    return out


def test_the_reference_lists_every_key_at_its_default() -> None:
    reference = yaml.safe_load(REFERENCE.read_text(encoding="utf-8"))
    assert flat(reference).keys() == flat(to_dict(Config())).keys()
    assert reference == to_dict(Config())
    assert load_config(REFERENCE) == Config()


def test_the_defaults_are_the_recommended_preset() -> None:
    assert to_dict(load_config("multi30k_de_en")) == {**to_dict(Config()),
                                                      "run_dir": "runs/multi30k_de_en"}


@pytest.mark.parametrize("name", presets())
def test_a_preset_states_only_what_differs_from_the_defaults(name: str) -> None:
    stated = flat(yaml.safe_load((PRESET_DIR / f"{name}.yaml").read_text(encoding="utf-8")))
    defaults = flat(to_dict(Config()))
    assert stated["run_dir"] == f"runs/{name}"
    assert {key for key, given in stated.items() if given == defaults[key]} == set()


def test_quick_and_en_de_take_precision_auto() -> None:
    assert load_config("quick").train.precision == "auto"
    assert load_config("multi30k_en_de").train.precision == "auto"


def test_a_stored_config_of_an_older_format_takes_what_it_meant() -> None:
    stored = to_dict(Config())  # as `dump` writes it: every key
    for key in OLDER_MEANING:
        section, name = key.split(".")
        del stored[section][name]
    cfg = from_dict(stored)
    assert {key: getattr(getattr(cfg, key.split(".")[0]), key.split(".")[1])
            for key in OLDER_MEANING} == OLDER_MEANING
    assert cfg.train.schedule == "inverse_sqrt" != Config().train.schedule
    assert from_dict({"train": {"lr": 0.001}}).train.schedule == Config().train.schedule


def test_a_run_from_before_train_schedule_resumes_with_the_schedule_it_had(
        tmp_path: Path) -> None:
    run_dir = Path(shutil.copytree(OLD_RUN, tmp_path / "run"))
    state = checkpoint.load(run_dir / "checkpoints" / "best.pt")
    assert "schedule" not in state["config"]["train"]
    cfg = load_config(run_dir / "config.yaml")  # `mha train RUN/config.yaml --resume`
    assert cfg.train.schedule == "inverse_sqrt"
    assert from_dict(state["config"]) == cfg
    model, _, _ = load_model(run_dir, "best", "cpu")
    optim = Optimizer(model, cfg.train, torch.device("cpu"), lambda step: 1.0)
    checked = saved_state(run_dir / "checkpoints" / "best.pt", cfg, resume=True)  # no refusal
    progress = restore(checked, model, optim)
    assert lr_factor(progress.step, cfg.train, progress) == \
        inverse_sqrt(progress.step, cfg.train.warmup_steps)
