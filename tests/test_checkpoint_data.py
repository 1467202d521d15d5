"""A checkpoint is data, never code: a file whose unpickling would run something is refused by
every command that reads one, before anything runs; and a run says where it came from."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mha.cli.app import app
from mha.inference import checkpoint
from mha.inference.checkpoint import CheckpointError
from mha.training.keeping import averaged_snapshots

TINY = ["data.vocab_size=200", "model.d_model=32", "model.heads=2", "model.d_ff=64",
        "train.batch_tokens=400", "train.warmup_steps=2", "train.max_steps=4",
        "train.eval_every=2", "train.average_last=2", "decode.max_len_a=0.5", "decode.max_len_b=4"]


def invoke(*args: str | Path):
    return CliRunner().invoke(app, [str(a) for a in args])


def train_args(run: Path, corpus: Path, *overrides: str) -> list[str]:
    sets = [f"run_dir={run}", f"data.corpus={corpus}", *TINY, *overrides]
    return ["train", "tiny", *(part for key in sets for part in ("--set", key))]


@pytest.fixture(scope="module")
def trained(small_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run `mha train` made (4 updates, two snapshots kept for averaging); copy it first."""
    run = tmp_path_factory.mktemp("trained") / "run"
    result = invoke(*train_args(run, small_corpus))
    assert result.exit_code == 0, result.output
    return run


class Payload:
    """Unpickling it calls open(marker, "w"): the file appears if the loader runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def poison(path: Path, marker: Path) -> None:
    """Rewrite a checkpoint (or snapshot) with a payload beside its real contents."""
    state = torch.load(path, weights_only=True)
    torch.save({**state, "payload": Payload(marker)}, path)


@pytest.mark.parametrize("command", ["translate", "eval", "explore", "export", "train --resume"])
def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(
        command, trained, small_corpus, tmp_path):
    run, marker = Path(shutil.copytree(trained, tmp_path / "run")), tmp_path / "pwned"
    which = "last" if command.startswith("train") else "best"
    poison(run / "checkpoints" / f"{which}.pt", marker)
    args = {"translate": ["translate", run, "Ein Hund."], "eval": ["eval", run],
            "explore": ["explore", run, "Ein Hund."], "export": ["export", run, "--to",
                                                                "ctranslate2"],
            "train --resume": [*train_args(run, small_corpus, "train.max_steps=6"), "--resume"]}
    result = invoke(*args[command])
    assert result.exit_code == 2, result.output
    assert result.stderr == (f"error: refusing {run}/checkpoints/{which}.pt: it holds io.open, "
                             "which is not data (a checkpoint holds only tensors, numbers, "
                             "strings and containers); nothing in it was run\n")
    assert not marker.exists()


def test_a_snapshot_that_would_run_code_is_refused_by_averaging(trained, tmp_path):
    run, marker = Path(shutil.copytree(trained, tmp_path / "run")), tmp_path / "pwned"
    steps = checkpoint.load(run / "checkpoints" / "last.pt")["progress"]["snapshots"]
    assert len(steps) == 2
    poison(run / "checkpoints" / f"weights_{steps[0]}.pt", marker)
    with pytest.raises(CheckpointError, match=rf"refusing .*weights_{steps[0]}.pt: it holds io"):
        averaged_snapshots(run, steps, torch.device("cpu"))
    assert not marker.exists()


def test_averaging_clean_snapshots_gives_their_mean(trained):
    steps = checkpoint.load(trained / "checkpoints" / "last.pt")["progress"]["snapshots"]
    snapshots = [checkpoint.load_weights(trained / "checkpoints" / f"weights_{s}.pt")
                 for s in steps]
    averaged = averaged_snapshots(trained, steps, torch.device("cpu"))
    for name, tensor in averaged.items():
        torch.testing.assert_close(tensor, (snapshots[0][name] + snapshots[1][name]) / 2)


def test_a_checkpoint_holding_a_foreign_object_names_it(tmp_path):
    import numpy as np

    path = tmp_path / "best.pt"
    torch.save({"format": checkpoint.FORMAT, "odd": np.zeros(2)}, path)
    with pytest.raises(CheckpointError, match=r"best.pt: it holds numpy\S*, which is not data"):
        checkpoint.load(path)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_run_and_every_eval_record_where_they_come_from(trained, small_corpus, tmp_path):
    entries = json.loads((trained / "provenance.json").read_text())
    assert len(entries) == 1
    entry = entries[0]
    assert entry["step"] == 0 and entry["precision"] == "fp32" and entry["device"] == "cpu"
    assert entry["torch"] == torch.__version__ and entry["mha"] and entry["cpu"]
    assert set(entry["cpu_flags"]) <= {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
    files = sorted(small_corpus.glob("*"))
    assert entry["corpus"] == {str(path.resolve()): sha256(path) for path in files
                               if path.name.split(".")[1] in ("de", "en")}
    run = Path(shutil.copytree(trained, tmp_path / "run"))
    resumed = invoke(*train_args(run, small_corpus, "train.max_steps=6"), "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert [e["step"] for e in json.loads((run / "provenance.json").read_text())] == [0, 4]
    kept = sorted(path.name for path in (run / "checkpoints").glob("weights_*.pt"))
    assert kept == ["weights_4.pt", "weights_6.pt"]  # average_last 2: the snapshot of 2 is gone
    result = invoke("eval", run, "--json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    written = json.loads((run / "eval" / "test.greedy.json").read_text())
    for scores in (printed, written):
        assert scores["provenance"]["run"] == json.loads((run / "provenance.json").read_text())
        assert scores["provenance"]["eval"]["torch"] == torch.__version__
        assert scores["provenance"]["eval"]["device"] == "cpu"
