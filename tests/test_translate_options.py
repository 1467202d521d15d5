"""`mha translate`'s n-best lists, JSON, forced prefixes and sampling, and their bad input, on the
session's tiny run (whose outputs run to their length cap: it never learned to stop)."""

from __future__ import annotations

import json

import pytest
from helpers import SENTENCES, assert_user_error, invoke

pytestmark = pytest.mark.usefixtures("_one_thread")


def lines_of(*args) -> list[str]:
    result = invoke("translate", *args)
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


def test_nbest_is_sorted_and_its_first_entry_is_the_beams_output(tiny_run):
    out = lines_of(tiny_run, "--beam", "4", "--nbest", "3", SENTENCES[0], "", SENTENCES[1])
    assert len(out) == 9
    beam = lines_of(tiny_run, "--beam", "4", SENTENCES[0], "", SENTENCES[1])
    for i, expected in zip((0, 6), (beam[0], beam[2])):
        fields = [line.split("\t") for line in out[i:i + 3]]
        assert [f[0] for f in fields] == ["1", "2", "3"]
        scores = [float(f[1]) for f in fields]
        assert scores == sorted(scores, reverse=True)
        assert all(float(f[2]) < 0 for f in fields) and len({f[3] for f in fields}) == 3
        assert fields[0][3] == expected
    assert out[3:6] == ["1\t\t\t", "2\t\t\t", "3\t\t\t"]  # a blank line keeps its place


def test_json_holds_what_each_mode_prints(tiny_run, loaded):
    modes = [[], ["--beam", "3"], ["--prefix", "Two dogs"], ["--sample", "--seed", "3"]]
    for mode in modes:
        plain = lines_of(tiny_run, *mode, *SENTENCES[:2], "")
        objects = [json.loads(line) for line in lines_of(tiny_run, *mode, "--json",
                                                          *SENTENCES[:2], "")]
        assert [o["text"] for o in objects] == plain, mode
        assert all(o["score"] < 0 and o["log_prob"] < 0 for o in objects[:2])
        assert objects[2] == {"text": "", "score": None, "log_prob": None}
    nbest = [json.loads(line) for line in lines_of(
        tiny_run, "--beam", "3", "--nbest", "2", "--json", SENTENCES[0])]
    printed = lines_of(tiny_run, "--beam", "3", "--nbest", "2", SENTENCES[0])
    assert len(nbest) == 1 and [e["text"] for e in nbest[0]["nbest"]] == \
        [line.split("\t")[3] for line in printed]
    assert {k: nbest[0][k] for k in ("text", "score", "log_prob")} == \
        {k: nbest[0]["nbest"][0][k] for k in ("text", "score", "log_prob")}


def test_token_scores_are_the_outputs_log_probabilities(tiny_run, loaded):
    _, tokenizer, cfg = loaded
    for mode in ([], ["--beam", "3", "--nbest", "2"]):
        line = lines_of(tiny_run, *mode, "--json", "--token-scores", SENTENCES[2])[0]
        for entry in json.loads(line).get("nbest") or [json.loads(line)]:
            tokens = entry["tokens"]
            assert tokens[-1]["piece"] == "</s>"
            assert "".join(t["piece"] for t in tokens[:-1]).replace("▁", " ").strip() == \
                entry["text"]
            source = len(tokenizer.encode_src([SENTENCES[2]])[0])
            ended = len(tokens) - 1 < int(cfg.decode.max_len_a * source + cfg.decode.max_len_b)
            summed = sum(t["log_prob"] for t in (tokens if ended else tokens[:-1]))
            assert summed == pytest.approx(entry["log_prob"], abs=1e-3)


def test_prefix_outputs_start_with_the_prefix_greedy_and_beam(tiny_run, tmp_path):
    free = lines_of(tiny_run, *SENTENCES)
    assert not any(line.startswith("Two dogs") for line in free)  # the prefix changes them
    for search in ([], ["--beam", "3"]):
        out = lines_of(tiny_run, *search, "--prefix", "Two dogs", *SENTENCES)
        assert all(line.startswith("Two dogs") and len(line) > 8 for line in out), out
    source = tmp_path / "in.de"
    source.write_text(f"{SENTENCES[0]}\tA woman\n{SENTENCES[1]}\n\n", encoding="utf-8")
    out = lines_of(tiny_run, "--input", source, "--prefix", "Two dogs")
    assert out[0].startswith("A woman") and out[1].startswith("Two dogs") and out[2] == ""
    piped = invoke("translate", tiny_run, "--prefix", "Two dogs", input=source.read_text())
    assert piped.stdout.splitlines() == out


def test_sampling_repeats_per_seed_differs_across_seeds_and_top_k_1_is_greedy(tiny_run):
    sentences = SENTENCES * 2  # the same sentence twice in a batch draws twice
    first = lines_of(tiny_run, "--sample", "--seed", "1", *sentences)
    assert lines_of(tiny_run, "--sample", "--seed", "1", *sentences) == first
    assert first[:3] != first[3:]
    seeds = {tuple(lines_of(tiny_run, "--sample", "--seed", str(seed), *SENTENCES))
             for seed in range(4)}
    assert len(seeds) == 4
    greedy = lines_of(tiny_run, *SENTENCES)
    assert lines_of(tiny_run, "--sample", "--top-k", "1", "--seed", "7", *SENTENCES) == greedy
    cold = lines_of(tiny_run, "--sample", "--temperature", "0.01", "--top-p", "0.5", *SENTENCES)
    assert cold == greedy


def test_the_runs_decode_beam_gives_way_to_sampling_and_says_so(run_copy):
    (run_copy / "decode.yaml").write_text("beam: 4\nlength_penalty: 1.0\n")
    result = invoke("translate", run_copy, "--sample", SENTENCES[0])
    assert result.exit_code == 0, result.output
    assert "decode.beam (4) gives way to --sample" in result.stderr
    assert len(result.stdout.splitlines()) == 1
    assert_user_error(run_copy, ["translate", run_copy, "--sample", "--beam", "4", "Hallo"],
                      "--sample draws one token at a time: it does not combine with --beam 4")
    assert_user_error(run_copy, ["translate", run_copy, "--nbest", "5", "Hallo"],
                      "--nbest (5) is above the beam size (4)")


@pytest.mark.parametrize("args, message", [
    (["--beam", "2", "--nbest", "3"], "--nbest (3) is above the beam size (2)"),
    (["--nbest", "2"], "--nbest (2) is above the beam size (1): a beam keeps only that many"),
    (["--nbest", "0"], "--nbest must be 1 or more, got 0"),
    (["--sample", "--beam", "3"], "it does not combine with --beam 3"),
    (["--sample", "--top-p", "0"], "--top-p must be in (0, 1], got 0.0"),
    (["--sample", "--top-p", "1.5"], "--top-p must be in (0, 1], got 1.5"),
    (["--sample", "--top-k", "0"], "--top-k must be 1 or more, got 0"),
    (["--sample", "--temperature", "0"], "--temperature must be above 0, got 0.0"),
    (["--sample", "--temperature", "-1"], "--temperature must be above 0, got -1.0"),
    (["--top-k", "5", "--seed", "2"], "--top-k, --seed only shape --sample's draws"),
    (["--token-scores"], "--token-scores are printed in --json output"),
])
def test_bad_search_options_are_one_error_line_and_write_nothing(tiny_run, tmp_path, args,
                                                                  message):
    output = tmp_path / "out.en"
    assert_user_error(tiny_run, ["translate", tiny_run, *args, "--output", output, "Hallo"],
                      message)
    assert not output.exists()


def test_the_attention_picture_takes_no_search_options(tiny_run, tmp_path):
    picture = tmp_path / "a.png"
    for extra, named in ((["--nbest", "1"], "--nbest"), (["--sample"], "--sample"),
                         (["--prefix", "A"], "--prefix"), (["--json"], "--json")):
        assert_user_error(tiny_run, ["translate", tiny_run, "Hallo", "--attention", picture,
                                     *extra], f"not with {named}")
    assert not picture.exists()
