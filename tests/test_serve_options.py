"""`mha serve`'s decoding options (the real server on the session's tiny run): each request field
gives what `mha translate --json` prints with the same flag, requests that sample are drawn alone
(the same seed, the same answer), requests with different options are not merged, and a bad
value is a 422 naming the field."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import OOV, SENTENCES, invoke

pytestmark = pytest.mark.usefixtures("_one_thread")  # one torch thread: the cores are shared

TEXTS = [*SENTENCES, OOV, ""]

OPTIONS = [  # (request fields, `mha translate` flags)
    ({"beam": 3, "nbest": 2}, ["--beam", "3", "--nbest", "2"]),
    ({"nbest": 1}, ["--nbest", "1"]),
    ({"prefix": "Two dogs"}, ["--prefix", "Two dogs"]),
    ({"beam": 2, "prefix": "Zwei"}, ["--beam", "2", "--prefix", "Zwei"]),
    ({"token_scores": True}, ["--token-scores"]),
    ({"beam": 3, "nbest": 3, "token_scores": True}, ["--beam", "3", "--nbest", "3",
                                                     "--token-scores"]),
    ({"alignments": True}, ["--alignments"]),
    ({"alignments": True, "align_layer": 0, "shift_att": True},
     ["--alignments", "--align-layer", "0", "--shift-att"]),
    ({"beam": 2, "nbest": 2, "alignments": True}, ["--beam", "2", "--nbest", "2",
                                                   "--alignments"]),
    ({"sample": True, "seed": 3}, ["--sample", "--seed", "3"]),
    ({"sample": True, "seed": 5, "top_k": 4, "top_p": 0.9, "temperature": 0.7},
     ["--sample", "--seed", "5", "--top-k", "4", "--top-p", "0.9", "--temperature", "0.7"]),
]


def cli_json(run, flags: list[str], texts: list[str]) -> list[dict]:
    result = invoke("translate", run, *flags, "--json", *texts)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.parametrize(("fields", "flags"), OPTIONS, ids=[" ".join(f) for _, f in OPTIONS])
def test_each_option_answers_what_translate_json_prints(served, tiny_run, fields, flags):
    status, answer = served.post("/translate", {"text": TEXTS, **fields})
    assert status == 200, answer
    assert answer["translations"] == cli_json(tiny_run, flags, TEXTS)


def test_a_tab_column_is_a_sentences_own_prefix(served, tiny_run):
    texts = [f"{SENTENCES[0]}\tZwei Hunde", SENTENCES[1]]
    status, answer = served.post("/translate", {"text": texts, "prefix": "Ein"})
    assert status == 200 and answer["translations"] == cli_json(
        tiny_run, ["--prefix", "Ein"], texts)
    assert answer["translations"][0]["text"].startswith("Zwei Hunde")


def test_sampling_requests_are_drawn_alone_with_their_own_seed(served):
    request = {"text": SENTENCES, "sample": True, "seed": 11, "temperature": 1.5}
    first = served.post("/translate", request)
    calls = served.get("/stats")[1]["calls"]
    assert served.post("/translate", request) == first  # seeded afresh, not drawn on
    assert served.get("/stats")[1]["calls"] == calls + 1  # on the model thread, not merged
    others = {json.dumps(served.post("/translate", request | {"seed": seed})[1])
              for seed in range(4)}
    assert len(others) > 1


def test_concurrent_requests_with_other_options_are_not_merged(tiny_run, served):
    requests = [{"text": [line]} | options for line in SENTENCES
                for options in ({}, {"beam": 3}, {"token_scores": True})]
    expected = [served.post("/translate", r)[1] for r in requests]  # each alone
    barrier = threading.Barrier(len(requests))

    def one(request: dict) -> object:
        barrier.wait()
        return served.post("/translate", request)[1]

    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(one, requests))
    assert_close(answers, expected)  # a merged batch pads: scores move in the last digits


def assert_close(got: object, expected: object) -> None:
    """Equal, floats within 1e-4."""
    if isinstance(expected, float):
        assert got == pytest.approx(expected, abs=1e-4)
    elif isinstance(expected, (list, dict)):
        assert type(got) is type(expected) and len(got) == len(expected)
        if isinstance(expected, dict):
            assert got.keys() == expected.keys()
            got, expected = list(got.values()), list(expected.values())
        for g, e in zip(got, expected):
            assert_close(g, e)
    else:
        assert got == expected


BAD = [  # (request fields, what the 422's error names)
    ({"sample": True, "top_p": 0}, "body.top_p: Input should be greater than 0"),
    ({"sample": True, "top_p": 1.5}, "body.top_p: Input should be less than or equal to 1"),
    ({"sample": True, "top_k": 0}, "body.top_k: Input should be greater than or equal to 1"),
    ({"sample": True, "temperature": 0}, "body.temperature: Input should be greater than 0"),
    ({"sample": True, "temperature": -1.0}, "body.temperature: Input should be greater"),
    ({"sample": True, "seed": -1}, "body.seed: Input should be greater than or equal to 0"),
    ({"sample": "yes"}, "body.sample: Input should be a valid boolean"),
    ({"top_k": 5, "seed": 2}, "top_k, seed only shape sample's draws: add \"sample\": true"),
    ({"sample": True, "beam": 3}, "it does not combine with beam 3"),
    ({"beam": 2, "nbest": 3}, "nbest (3) is above the beam size (2)"),
    ({"nbest": 2}, "body.nbest: nbest (2) is above the beam size (1, the run's decode.beam)"),
    ({"nbest": 2, "sample": True}, "body.nbest: nbest (2) is above the beam size (1, sample"),
    ({"nbest": 0}, "body.nbest: Input should be greater than or equal to 1"),
    ({"align_layer": 0, "shift_att": True}, "align_layer, shift_att choose how alignments"),
    ({"alignments": True, "align_layer": 9}, "body.align_layer: align_layer must be a decoder"),
    ({"alignments": True, "align_layer": -1}, "body.align_layer: Input should be greater"),
    ({"token_scores": 1}, "body.token_scores: Input should be a valid boolean"),
    ({"prefix": 3}, "body.prefix: Input should be a valid string"),
    ({"prefix": "a\ud800"}, "body.prefix: Value error, character 2 is U+D800"),
]


@pytest.mark.parametrize(("fields", "named"), BAD, ids=[json.dumps(f) for f, _ in BAD])
def test_a_bad_option_is_a_422_naming_it(served, fields, named):
    status, answer = served.post("/translate", {"text": ["Ein Hund."], **fields})
    assert status == 422 and named in answer["error"], answer
    assert answer["problems"] and "Traceback" not in json.dumps(answer)


def test_an_infinite_temperature_is_refused(served):
    body = b'{"text": ["Ein Hund."], "sample": true, "temperature": Infinity}'
    status, answer = served.post("/translate", body)
    assert status == 422 and "body.temperature: Value error, must be a finite number" in (
        answer["error"]), answer
