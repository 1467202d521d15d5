"""`mha tune-decode`: every (beam, penalty) scored on val, the argmax kept in RUN/decode.yaml and
used by eval and translate; bad grids and bad files are one error line."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from helpers import assert_user_error, invoke

from mha.configs.schema import ConfigError
from mha.inference import evaluate
from mha.inference.run import load_model
from mha.inference.tune import Trial, best, choose, format_table, parse_grid

pytestmark = pytest.mark.usefixtures("_one_thread")  # one torch thread: the cores are shared


def table_cells(table: str) -> dict[tuple[int, float], str]:
    """The markdown table back as {(beam, penalty): cell}."""
    header, _, *rows = table.splitlines()
    penalties = [float(p) for p in header.strip("| ").split(" | ")[1:]]
    cells = {}
    for row in rows:
        beam, *values = row.strip("| ").split(" | ")
        for penalty, value in zip(penalties, values):
            cells[int(beam.split()[0]), penalty] = value
    return cells


def test_the_choice_is_the_argmax_with_ties_to_the_cheaper_decoding():
    trials = [Trial(1, 0.6, 30.0, 31.0, 1), Trial(1, 1.0, 30.0, 31.0, 1),
              Trial(4, 0.6, 30.5, 31.5, 2), Trial(4, 1.0, 31.0, 32.0, 2),
              Trial(5, 0.6, 29.0, 30.0, 2), Trial(5, 1.0, 31.0, 32.0, 2)]
    assert best(trials) == trials[3]  # 31.0 twice: the smaller beam
    assert choose(trials).beam == 4 and choose(trials).length_penalty == 1.0
    greedy_wins = [Trial(1, 1.0, 33.0, 34.0, 1), *trials[2:]]
    choice = choose(greedy_wins)  # greedy, but --beam N would use the best search's penalty
    assert choice.beam == 1 and choice.length_penalty == 1.0
    assert table_cells(format_table(trials))[4, 1.0] == "31.00*"
    cells = table_cells(format_table(greedy_wins))
    assert [key for key, cell in cells.items() if cell.endswith("*")] == [(1, 1.0)]
    tie = [Trial(4, 0.6, 30.0, 30.0, 1), Trial(4, 1.2, 30.0, 30.0, 1), Trial(4, 1.4, 30.0, 30, 1)]
    assert best(tie).length_penalty == 1.2  # the penalty nearest 1


@pytest.mark.parametrize("beams, penalties, message", [
    ("0,5", "1.0", "beam sizes must be >= 1, got 0"),
    ("5", "-0.5,1", "length penalties must be >= 0, got -0.5"),
    ("5", "nan", "length penalties must be >= 0, got nan"),
    ("five", "1.0", "--beams takes whole numbers"),
    ("5", "1.0,", "--penalties numbers, comma-separated"),
])
def test_bad_grids_are_refused(beams, penalties, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_grid(beams, penalties)


def test_tune_scores_every_combination_keeps_the_argmax_and_eval_uses_it(run_copy):
    result = invoke("tune-decode", run_copy, "--beams", "2,1", "--penalties", "0.5,1.5,1.0")
    assert result.exit_code == 0, result.output
    table = result.stdout.split(":\n", 1)[1].rsplit("\nchose", 1)[0]
    cells = table_cells(table)
    assert sorted(cells) == [(b, p) for b in (1, 2) for p in (0.5, 1.0, 1.5)]
    assert len({cells[1, p].rstrip("*") for p in (0.5, 1.0, 1.5)}) == 1  # greedy: no penalty
    starred = [key for key, cell in cells.items() if cell.endswith("*")]
    assert len(starred) == (3 if starred[0][0] == 1 else 1)  # greedy: its whole row
    scores = {key: float(cell.rstrip("*")) for key, cell in cells.items()}
    assert scores[starred[0]] == max(scores.values())
    stored = yaml.safe_load((run_copy / "decode.yaml").read_text())
    assert stored["beam"] == starred[0][0] and stored["step"] == 60
    assert stored["val_bleu"] == round(scores[starred[0]], 2)
    searches = {p: scores[2, p] for p in (0.5, 1.0, 1.5)}
    assert searches[stored["length_penalty"]] == max(searches.values())
    assert "chose " in result.stdout and str(run_copy / "decode.yaml") in result.stdout
    # eval and translate decode the tuned way; an explicit --beam still wins
    (run_copy / "decode.yaml").write_text(yaml.safe_dump({**stored, "beam": 2,
                                                          "length_penalty": 1.5}))
    assert load_model(run_copy)[2].decode.beam == 2
    assert load_model(run_copy)[2].decode.length_penalty == 1.5
    report = json.loads(invoke("eval", run_copy, "--json").stdout)
    assert report["beam"] == 2 and report["hypotheses"].endswith("test.beam2.hyp")
    assert json.loads(invoke("eval", run_copy, "--json", "--beam", "1").stdout)["beam"] == 1


def test_tuning_reads_the_val_split_only(run_copy, monkeypatch):
    roles = []
    real = evaluate.eval_set

    def spy(run_dir, role="test", *args):
        roles.append(role)
        return real(run_dir, role, *args)

    monkeypatch.setattr(evaluate, "eval_set", spy)
    result = invoke("tune-decode", run_copy, "--beams", "1", "--penalties", "1")
    assert result.exit_code == 0, result.output
    assert roles == ["val"] and "of 300 sentences" in result.stdout
    assert "No such option" in invoke("tune-decode", run_copy, "--split", "test").output


@pytest.mark.parametrize("args, message", [
    (["--beams", "0"], "beam sizes must be >= 1, got 0"),
    (["--penalties", "-1"], "length penalties must be >= 0, got -1.0"),
    (["--beams", "1;5"], "--beams takes whole numbers"),
])
def test_bad_values_are_one_error_line_and_write_nothing(tiny_run, args, message):
    assert_user_error(tiny_run, ["tune-decode", tiny_run, *args], message)
    assert not (tiny_run / "decode.yaml").exists()


@pytest.mark.parametrize("content, message", [
    ("beam: 0\nlength_penalty: 1.0\n", "decode.yaml: invalid config: decode.beam must be >= 1"),
    ("beam: 4\nlength_penalty: -1\n", "decode.length_penalty must be >= 0, got -1.0"),
    ("beam: 4\n", "expected beam and length_penalty"),
    ("beam: [4\n", "not valid YAML"),
])
def test_a_bad_decode_yaml_is_one_error_line(run_copy, content, message):
    (run_copy / "decode.yaml").write_text(content)
    assert_user_error(run_copy, ["translate", run_copy, "Ein Hund."], message)


def test_a_choice_tuned_on_another_checkpoint_is_used_with_a_warning(run_copy, caplog):
    (run_copy / "decode.yaml").write_text("beam: 3\nlength_penalty: 0.8\nstep: 10\n")
    assert load_model(run_copy)[2].decode.beam == 3
    assert "tuned on the checkpoint of step 10; this one is step 60" in caplog.text
