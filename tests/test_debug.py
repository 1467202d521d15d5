"""`mha --debug` (or MHA_DEBUG=1): the project's errors print their traceback with the chain of
causes, then the usual one line; without it, the one line alone."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mha.cli.app import app

pytestmark = pytest.mark.usefixtures("_one_thread")  # one torch thread: the cores are shared

CAUSE = "The above exception was the direct cause of the following exception"


def run(args: list, env: dict[str, str] | None = None):
    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    return result.stderr.splitlines()


def truncated_run(run_copy: Path) -> Path:
    best = run_copy / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    return run_copy


@pytest.mark.parametrize("how", [["--debug"], "MHA_DEBUG=1"])
def test_a_corrupt_checkpoint_shows_its_original_exception(run_copy: Path, how) -> None:
    args = ["translate", truncated_run(run_copy), "Hallo"]
    plain = run([*args])
    assert len(plain) == 1 and plain[0].startswith("error: checkpoint ")
    assert "truncated or corrupt" in plain[0]
    debug = (run([*how, *args]) if isinstance(how, list)
             else run(args, env={"MHA_DEBUG": "1"}))
    text = "\n".join(debug)
    assert debug[0] == "Traceback (most recent call last):"
    assert CAUSE in text
    # torch's own error comes first, then ours; the one line still closes the output
    assert text.index("RuntimeError: PytorchStreamReader") < text.index(
        "mha.inference.checkpoint.CheckpointError: checkpoint")
    assert debug[-1] == plain[0]


def test_a_bad_yaml_shows_the_parser_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  heads: [8\n")
    plain = run(["tokenize", path])
    assert len(plain) == 1 and "not valid YAML" in plain[0]
    debug = run(["--debug", "tokenize", path])
    assert "yaml.parser.ParserError" in "\n".join(debug) and CAUSE in "\n".join(debug)
    assert debug[-1] == plain[0]
    assert run(["tokenize", path], env={"MHA_DEBUG": "0"}) == plain
