"""`mha train CONFIG --init-from RUN[:CHECKPOINT]`: a new run starts from another run's weights
and tokenizer, on its own data, with a fresh optimiser and schedule, and records where it
started; a config that does not fit the run's weights is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import assert_user_error, invoke, one_thread, write_config

from mha.configs.schema import Config, load_config
from mha.data.prepare import load_prepared
from mha.data.tokenizer import Tokenizer
from mha.inference import checkpoint
from mha.training.distributed import Distributed
from mha.training.init_from import load_source, parse_spec
from mha.training.loop import Trainer
from mha.training.monitor import read_metrics
from mha.training.validate import validate

pytestmark = pytest.mark.usefixtures("_one_thread")  # one torch thread: the cores are shared


@pytest.fixture(scope="module")
def domain(small_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local folder of parallel files standing in for a user's own data: 120 other training
    pairs, and the validation and test lines the source run was validated on."""
    folder = tmp_path_factory.mktemp("domain")
    for lang in ("de", "en"):
        lines = (small_corpus / f"train.{lang}").read_text(encoding="utf-8").splitlines(True)
        (folder / f"train.{lang}").write_text("".join(lines[150:270]), encoding="utf-8")
        for split in ("val", "test_2016_flickr"):
            (folder / f"{split}.{lang}").write_text(
                (small_corpus / f"{split}.{lang}").read_text(encoding="utf-8"), encoding="utf-8")
    return folder


def fine_tune(run_dir: Path, corpus: Path, *overrides: str) -> Config:
    """The tiny run's network and vocabulary (make_tiny_run's config) on other data."""
    return load_config("tiny", [f"run_dir={run_dir}", f"data.corpus={corpus}",
                                "data.vocab_size=200", "train.eval_every=60", *overrides])


def test_fine_tuning_starts_at_the_source_runs_validation_loss(tiny_run, domain, tmp_path):
    cfg = fine_tune(tmp_path / "tuned", domain)
    trainer = Trainer(cfg, False, Distributed.from_env("cpu"), load_source(str(tiny_run), cfg))
    try:
        assert trainer.progress.step == 0 and not trainer.optim.adam.state  # a fresh optimiser
        assert trainer.prepared.tokenizer == load_prepared(tiny_run).tokenizer
        assert trainer.prepared.splits["val"]["src_ids"] == \
            load_prepared(tiny_run).splits["val"]["src_ids"]  # the run's ids for the same lines
        assert len(trainer.prepared.splits["train"]) < 125  # its own training pairs
        first = validate(trainer.model, trainer.prepared, cfg, trainer.device)
    finally:
        trainer.monitor.close()
    source = [r for r in read_metrics(tiny_run / "metrics.jsonl") if "val_loss" in r]
    assert checkpoint.load(tiny_run / "checkpoints" / "best.pt")["step"] == source[-1]["step"]
    assert first.loss == pytest.approx(source[-1]["val_loss"], abs=1e-6)
    assert first.bleu == pytest.approx(source[-1]["val_bleu"], abs=1e-9)


def test_the_command_records_where_the_run_started_and_resumes(tiny_run, domain, tmp_path):
    run = tmp_path / "tuned"
    config = write_config(fine_tune(run, domain, "train.max_steps=4", "train.warmup_steps=1",
                                    "train.eval_every=4", "model.dropout=0.3"), tmp_path / "t.yaml")
    with one_thread():
        result = invoke("train", config, "--init-from", f"{tiny_run}:last")
    assert result.exit_code == 0, result.output
    started = {"run": str(tiny_run.resolve()),
               "checkpoint": str((tiny_run / "checkpoints" / "last.pt").resolve()), "step": 60}
    assert checkpoint.load(run / "checkpoints" / "last.pt")["init_from"] == started
    assert json.loads((run / "provenance.json").read_text())[0]["init_from"] == started
    assert (run / "tokenizer" / "spm.model").read_bytes() == \
        (tiny_run / "tokenizer" / "spm.model").read_bytes()
    with one_thread():  # the run keeps the tokenizer it was given, and its record
        resumed = invoke("train", config, "--resume", "--set", "train.max_steps=6")
    assert resumed.exit_code == 0, resumed.output
    assert Tokenizer.load(run / "tokenizer") == load_prepared(tiny_run).tokenizer
    assert checkpoint.load(run / "checkpoints" / "last.pt")["init_from"] == started
    assert "init_from" not in json.loads((run / "provenance.json").read_text())[1]


def test_a_checkpoint_is_named_by_run_and_name_or_path(tiny_run) -> None:
    best = tiny_run / "checkpoints" / "best.pt"
    assert parse_spec(str(tiny_run)) == (tiny_run, "best")
    assert parse_spec(f"{tiny_run}:last") == (tiny_run, "last")
    assert parse_spec(f"{tiny_run}:{best}") == (tiny_run, str(best))
    assert parse_spec(str(best)) == (tiny_run, str(best))


def test_what_does_not_fit_is_one_line_each(tiny_run, domain, tmp_path) -> None:
    run = tmp_path / "tuned"
    config = write_config(fine_tune(run, domain), tmp_path / "t.yaml")
    cases = [
        (["--set", "model.d_model=32", "--set", "data.vocab_size=300"],
         (f"--init-from {tiny_run}: the config differs from the run's at model.d_model (64 in the "
         "run, 32 here); data.vocab_size (200 in the run, 300 here)")),
        (["--set", "data.byte_fallback=true", "--set", "data.vocab_size=400"],
         ("data.vocab_size (200 in the run, 400 here); data.byte_fallback (False in the run, "
         "True here)")),
        (["--resume"], "--init-from starts a new run from another run's weights, --resume"),
    ]
    for extra, message in cases:
        assert_user_error(run, ["train", config, "--init-from", tiny_run, *extra], message)
    assert_user_error(run, ["train", config, "--init-from", tmp_path / "nowhere"],
                      f"run folder {tmp_path / 'nowhere'} does not exist")
    assert_user_error(run, ["train", config, "--init-from", f"{tiny_run}:{tmp_path / 'x.pt'}"],
                      f"no checkpoint at {tmp_path / 'x.pt'}")
    assert not run.exists()
