"""`mha eval` and sacreBLEU scoring: reports, JSON, hypotheses files, mismatched inputs."""

from __future__ import annotations

import json
import shutil

import pytest
import sacrebleu
from helpers import assert_user_error, invoke

from mha.inference.evaluate import score

pytestmark = pytest.mark.usefixtures("_one_thread")  # one torch thread: the cores are shared

SOURCES = ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee.", "Ein Kind lacht."]
REFERENCES = ["A man rides a bike.", "Two dogs play in the snow.", "A child laughs."]


def test_score_is_sacrebleu_with_its_signature():
    perfect = score(REFERENCES, REFERENCES)
    assert round(perfect["bleu"], 6) == 100 and round(perfect["chrf"], 6) == 100
    assert {"tok:13a", "case:mixed"} <= set(perfect["signature"]["bleu"].split("|"))
    assert perfect["signature"]["chrf"].startswith("nrefs:1|case:mixed")
    assert score(["A dog.", "", "A child laughs."], REFERENCES)["bleu"] < 100


def test_lowercased_bleu_is_sacrebleus_lc_and_never_below_the_cased_one():
    hypotheses = ["a man rides a BIKE.", "Two Dogs play in the snow.", "A child laughs."]
    scores = score(hypotheses, REFERENCES)
    lowercased = sacrebleu.corpus_bleu(hypotheses, [REFERENCES], lowercase=True)
    assert scores["bleu_lc"] == lowercased.score and scores["bleu_lc_text"] == str(lowercased)
    assert scores["bleu_lc"] > scores["bleu"]  # the case differences cost only the cased score
    assert scores["bleu"] == sacrebleu.corpus_bleu(hypotheses, [REFERENCES]).score
    assert "case:lc" in scores["signature"]["bleu_lc"].split("|")
    assert scores["signature"]["bleu_lc"].replace("case:lc", "case:mixed") == \
        scores["signature"]["bleu"]
    assert score(REFERENCES, REFERENCES)["bleu_lc"] == score(REFERENCES, REFERENCES)["bleu"]


def test_eval_of_the_test_split_prints_scores_and_writes_hypotheses(run_copy):
    result = invoke("eval", run_copy)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("BLEU = ") and "case:mixed|eff:no|tok:13a" in lines[1]
    assert lines[2].startswith("BLEU = ") and lines[2].endswith("(lowercased)")
    assert "case:lc|eff:no|tok:13a" in lines[3]
    assert lines[4].startswith("chrF2 = ") and "nc:6" in lines[5]
    hypotheses = (run_copy / "eval" / "test.greedy.hyp").read_text(encoding="utf-8").splitlines()
    assert len(hypotheses) == 300 and str(run_copy / "eval" / "test.greedy.hyp") in lines[6]
    saved = json.loads((run_copy / "eval" / "test.greedy.json").read_text(encoding="utf-8"))
    assert lines[0] == saved["bleu_text"] and saved["sentences"] == 300 and saved["beam"] == 1


def test_eval_json_from_files_with_a_beam(run_copy, tmp_path):
    src, ref, hyp = tmp_path / "few.de", tmp_path / "few.en", tmp_path / "out" / "few.hyp"
    src.write_text("\n".join(SOURCES) + "\n", encoding="utf-8")
    ref.write_text("\n".join(REFERENCES) + "\n", encoding="utf-8")
    result = invoke("eval", run_copy, "--src-file", src, "--ref-file", ref, "--json", "--beam", "2")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {"bleu", "bleu_lc", "bleu_lc_text", "chrf", "signature", "sentences",
            "seconds"} <= report.keys()
    assert report["bleu_lc"] >= report["bleu"] and "case:lc" in report["signature"]["bleu_lc"]
    assert report["sentences"] == 3 and report["beam"] == 2
    assert len((run_copy / "eval" / "few.de.beam2.hyp").read_text().splitlines()) == 3
    assert json.loads((run_copy / "eval" / "few.de.beam2.json").read_text()) == report
    result = invoke("eval", run_copy, "--src-file", src, "--ref-file", ref, "--output", hyp)
    assert result.exit_code == 0, result.output
    assert len(hyp.read_text().splitlines()) == 3


def test_bad_eval_input_is_one_error_line_and_writes_nothing(tiny_run, run_copy, tmp_path):
    src, ref, bad = tmp_path / "a.de", tmp_path / "a.en", tmp_path / "bad.en"
    src.write_text("\n".join(SOURCES) + "\n", encoding="utf-8")
    ref.write_text("\n".join(REFERENCES[:2]) + "\n", encoding="utf-8")
    bad.write_bytes(b"A man.\nA \xc3 dog.\nok\n")
    shutil.rmtree(run_copy / "data")
    cases = [
        (["--src-file", src, "--ref-file", ref], "has 3 lines but"),
        (["--src-file", src], "go together"),
        (["--src-file", src, "--ref-file", bad], "bad.en, line 2: not UTF-8"),
        (["--split", "train"], "split must be one of test, val"),
    ]
    for args, message in cases:
        assert_user_error(tiny_run, ["eval", tiny_run, *args], message)
    assert_user_error(run_copy, ["eval", run_copy], "no tokenized data")
    assert not (tiny_run / "eval").exists() and not (run_copy / "eval").exists()
    assert_user_error(tmp_path, ["eval", tmp_path / "missing"], "does not exist")


def test_the_command_list_shows_translate_and_eval():
    result = invoke("--help")
    assert "translate" in result.stdout and "eval" in result.stdout
