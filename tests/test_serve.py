"""`mha serve`, the real server (a subprocess on a free loopback port, the session's tiny run):
it translates and explores as the CLI does, merges concurrent requests into batches, refuses bad
requests with JSON errors, survives clients that leave, and drains on SIGTERM and SIGINT. The
live page in the browser is in test_serve_page.py."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from helpers import (
    OOV,
    SENTENCES,
    assert_user_error,
    invoke,
    optional,
    start_server,
    stop_server,
    wait_until,
)

from mha.data.tokenizer import Tokenizer
from mha.inference.search import Search
from mha.inference.translate import MhaEngine
from tests.test_serve_options import assert_close

pytestmark = pytest.mark.usefixtures("_one_thread")  # one torch thread: the cores are shared

TEXTS = [*SENTENCES, OOV, ""]


def cli(*args) -> list[str]:
    """`mha translate`'s output lines."""
    result = invoke("translate", *args)
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


def log_probabilities(model, tokenizer, text: str, translation_ids: list[int]) -> list[float]:
    """The reference: one sentence alone, teacher-forced, each output token's and EOS's
    log-probability."""
    src = torch.tensor([tokenizer.encode_src([text])[0]])  # (1, S)
    tgt = [Tokenizer.BOS, *translation_ids, Tokenizer.EOS]
    with torch.no_grad():
        log_probs = model(src, torch.tensor([tgt[:-1]]))[0].log_softmax(-1)  # (T, V)
    return log_probs[torch.arange(len(tgt) - 1), torch.tensor(tgt[1:])].tolist()


@pytest.mark.parametrize("beam", [None, 3])
def test_translations_are_mha_translates_with_their_scores(served, tiny_run, loaded, beam,
                                                           caplog):
    model, tokenizer, cfg = loaded
    with caplog.at_level(logging.WARNING):
        expected = cli(tiny_run, *(["--beam", str(beam)] if beam else []), "--json", *TEXTS)
    status, answer = served.post("/translate", {"text": TEXTS} | ({"beam": beam} if beam else {}))
    assert status == 200, answer
    # greedy decodes in the running batch (StaticGreedy), the CLI alone: scores differ in the
    # last digits
    assert_close(answer["translations"], [json.loads(line) for line in expected])
    assert answer["beam"] == (beam or 1)
    warning = next(r.getMessage() for r in caplog.records if "does not know" in r.getMessage())
    assert answer["warnings"] == [warning.replace("the arguments", "the request")]
    alone = MhaEngine(model, tokenizer, cfg.decode)
    for text, item in zip(TEXTS, answer["translations"]):
        if not text:
            assert item == {"text": "", "score": None, "log_prob": None}
            continue
        best = alone.decode(tokenizer.encode_src([text]), Search(beam=beam or 1))[0][0]
        assert tokenizer.decode_tgt(best.ids) == item["text"]
        assert item["log_prob"] == pytest.approx(best.log_prob, abs=1e-3)
        steps = log_probabilities(model, tokenizer, text, best.ids)  # teacher-forced, and EOS
        assert item["log_prob"] == pytest.approx(sum(steps[:len(best.ids)]), abs=1e-3) or \
            item["log_prob"] == pytest.approx(sum(steps), abs=1e-3)  # ended at the cap, or EOS


def test_explore_answers_the_json_mha_explore_embeds(served, tiny_run, tmp_path):
    page = tmp_path / "page.html"
    assert invoke("explore", tiny_run, OOV, "--beam", "2", "--output", page).exit_code == 0
    embedded = re.search(r'<script type="application/json" id="mha-data">(.*?)</script>',
                         page.read_text(encoding="utf-8"), re.DOTALL).group(1)
    expected = json.loads(embedded)
    expected["warnings"] = [w.replace("the arguments", "the request")
                            for w in expected["warnings"]]
    assert expected["warnings"] and expected["sentences"][0]["steps"][0]["beams"]
    status, answer = served.post("/explore", {"text": OOV, "beam": 2})
    # the page's run-level tabs (embeddings, history, heads, alignment) are mha explore's alone
    assert status == 200 and answer == {key: expected[key] for key in answer}
    assert set(expected) - set(answer) <= {"embeddings", "history", "heads", "checkpoint_step",
                                           "alignment"}


def test_concurrent_requests_share_a_batch_and_each_gets_its_own_answer(tiny_run, small_corpus,
                                                                        tmp_path):
    lines = (small_corpus / "test_2016_flickr.de").read_text(encoding="utf-8").splitlines()[:17]
    expected = cli(tiny_run, *lines)
    # the first sentence opens a 10 s window, which closes when the 16th arrives; the 17th finds
    # no free row, so it joins the running batch once a sentence has ended
    server = start_server(tiny_run, tmp_path, "--batch-window", "10", "--max-batch", "16")
    wait_until(lambda: server.get("/health")[1]["warm"], "the running batch's process")
    barrier = threading.Barrier(len(lines))

    def one(line: str) -> tuple[int, object]:
        barrier.wait()
        return server.post("/translate", {"text": [line]})

    with ThreadPoolExecutor(len(lines)) as pool:
        answers = list(pool.map(one, lines))
    assert [(status, a["translations"][0]["text"]) for status, a in answers] == [
        (200, line) for line in expected]
    stats = server.get("/stats")[1]
    counts = ("requests", "sentences", "batches", "largest_batch", "joined", "queued", "pending",
              "window", "max_batch")
    assert {key: stats[key] for key in counts} == {
        "requests": 17, "sentences": 17, "batches": 0, "largest_batch": 16, "joined": 1,
        "queued": 0, "pending": 0, "window": 10.0, "max_batch": 16}
    # rows: sentences decoding, summed over the steps; one at a time they would equal the steps
    assert stats["rows"] > 2 * stats["steps"] > 0 and stats["busy_seconds"] > 0
    assert stop_server(server) == 0


BAD = [  # (path, body, status, what the error names)
    ("/translate", {"text": ["Ein Hund."] * 9}, 413, "max_sentences (8)"),
    ("/translate", {"text": ["Ein Hund.", "a" * 201]}, 413, "sentence 2 has 201 characters"),
    ("/explore", {"text": "a" * 201}, 413, "max_chars (200)"),
    ("/translate", {"text": ["a" * 30000]}, 413, "max_body (23360 bytes"),
    ("/translate", b'{"text": ["Ein Hund."', 422, "invalid JSON at character"),
    ("/translate", b'{"text": ["\xff"]}', 422, "not JSON in UTF-8"),
    ("/translate", b'{"text": "\\ud800"}', 422, "body.text"),
    ("/explore", b'{"text": "a\\ud800"}', 422, "character 2 is U+D800, half of a surrogate"),
    ("/translate", ["Ein Hund."], 422, "body: Input should be a valid dictionary"),
    ("/translate", {"sentences": ["Ein Hund."]}, 422, "body.text: Field required"),
    ("/translate", {"text": []}, 422, "body.text: List should have at least 1 item"),
    ("/translate", {"text": "Ein Hund."}, 422, "body.text: Input should be a valid list"),
    ("/translate", {"text": [3]}, 422, "body.text.0: Input should be a valid string"),
    ("/translate", {"text": ["x"], "beam": 0}, 422, "body.beam: Input should be greater"),
    ("/translate", {"text": ["x"], "beam": 17}, 422, "body.beam: Input should be less"),
    ("/translate", {"text": ["x"], "beam": "3"}, 422, "body.beam: Input should be a valid int"),
    ("/translate", {"text": ["x"], "n_best": 2}, 422, "body.n_best: Extra inputs"),
    ("/translation", {"text": ["x"]}, 404, "Not Found"),
]


@pytest.mark.parametrize(("path", "body", "status", "named"), BAD,
                         ids=[f"{i}-{case[2]}" for i, case in enumerate(BAD)])
def test_bad_requests_get_a_json_error_that_names_the_problem(served, path, body, status, named):
    got, answer = served.post(path, body)
    assert got == status and isinstance(answer, dict), answer
    assert named in answer["error"] and "Traceback" not in json.dumps(answer)
    if status == 413:
        assert answer["limit"] in answer["error"]


def test_an_oversize_body_without_a_length_is_refused_as_it_arrives(served):
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
    chunks = iter([b'{"text": ["', b"a" * 20000, b"a" * 20000, b'"]}'])
    connection.request("POST", "/translate", body=chunks, encode_chunked=True,
                       headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 413 and json.loads(response.read())["limit"] == "max_body"


def test_a_client_that_leaves_mid_request_does_not_stop_the_server(served):
    before = served.get("/stats")[1]["requests"]
    body = json.dumps({"text": SENTENCES}).encode()
    head = (f"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    for sent in (head + body, head + body[:10]):  # whole, then half a body
        with socket.create_connection(("127.0.0.1", served.port)) as client:
            client.sendall(sent)
    wait_until(lambda: served.get("/stats")[1]["requests"] == before + 1,
               "the abandoned request to be decoded")
    status, answer = served.post("/translate", {"text": SENTENCES[:1]})
    assert status == 200 and answer["translations"][0]["text"]
    assert "Traceback" not in served.log.read_text()


def test_health_info_and_the_openapi_schema(served, tiny_run, loaded):
    _, tokenizer, cfg = loaded
    served.post("/translate", {"text": SENTENCES[:1]})  # answered after the warm-up: one thread
    assert served.get("/health") == (200, {"status": "ready", "warm": True})
    status, info = served.get("/info")
    assert status == 200 and info["run"] == str(tiny_run) and info["engine"] == "mha"
    assert info["step"] == torch.load(tiny_run / "checkpoints/best.pt",
                                      weights_only=True)["step"]
    assert info["checkpoint"] == str(tiny_run / "checkpoints/best.pt")
    assert info["tokenizer"] == {"joint": tokenizer.joint,
                                 "src_vocab_size": tokenizer.src_vocab_size,
                                 "tgt_vocab_size": tokenizer.tgt_vocab_size}
    assert info["config"]["model"]["d_model"] == cfg.model.d_model
    assert info["limits"] == {"max_sentences": 8, "max_chars": 200, "max_body": 23360}
    status, schema = served.get("/openapi.json")
    assert {"/translate", "/explore", "/health", "/info", "/stats"} <= set(schema["paths"])


@pytest.mark.parametrize(("signum", "host"), [(signal.SIGTERM, "127.0.0.1"),
                                              (signal.SIGINT, "0.0.0.0")])
def test_a_signal_drains_the_request_in_flight_and_exits_0(tiny_run, tmp_path, signum, host):
    server = start_server(tiny_run, tmp_path, "--host", host, "--batch-window", "3")
    wait_until(lambda: server.get("/health")[1]["warm"], "the running batch's process")
    assert ("other machines can reach this server" in server.log.read_text()) == (
        host != "127.0.0.1")
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(server.post, "/translate", {"text": SENTENCES[:1]})
        wait_until(lambda: server.get("/stats")[1]["pending"] == 1, "the request in flight")
        assert stop_server(server, signum) == 0
        status, body = answer.result()
    assert status == 200 and [t["text"] for t in body["translations"]] == cli(tiny_run,
                                                                               SENTENCES[0])
    assert f"{signal.Signals(signum).name}: stopped after the requests in flight" in (
        server.log.read_text())


def test_if_the_decoding_process_ends_greedy_requests_decode_in_whole_batches(tiny_run, tmp_path):
    server = start_server(tiny_run, tmp_path)
    wait_until(lambda: server.get("/health")[1]["warm"], "the running batch's process")
    stats = server.get("/stats")[1]
    assert stats["stream"] == "ready" and stats["batches"] == 0
    os.kill(stats["stream_pid"], signal.SIGKILL)
    wait_until(lambda: server.get("/stats")[1]["stream"] == "ended", "the server to notice")
    status, answer = server.post("/translate", {"text": SENTENCES[:2]})
    assert status == 200 and [t["text"] for t in answer["translations"]] == cli(
        tiny_run, *SENTENCES[:2])
    assert server.get("/stats")[1]["batches"] == 1 and server.get("/health")[0] == 200
    assert "greedy requests now decode in whole batches" in server.log.read_text()
    assert stop_server(server) == 0


def test_the_ctranslate2_engine_serves_the_exported_models_translations(run_copy, tmp_path):
    optional("ctranslate2")
    assert invoke("export", run_copy, "--to", "ctranslate2").exit_code == 0
    expected = cli(run_copy, "--engine", "ctranslate2", *TEXTS)
    server = start_server(run_copy, tmp_path, "--engine", "ctranslate2")
    status, answer = server.post("/translate", {"text": TEXTS})
    assert status == 200 and [t["text"] for t in answer["translations"]] == expected
    assert all(isinstance(t["score"], float) for t in answer["translations"][:-1])
    for option in ("alignments", "sample"):  # one chosen layer's heads; one seed per model
        status, answer = server.post("/translate", {"text": ["x"], option: True})
        assert status == 422 and f"body.{option}: " in answer["error"], answer
    assert server.get("/info")[1]["engine"] == "ctranslate2"
    assert server.post("/explore", {"text": "x"})[0] == server.get("/")[0] == 501
    assert stop_server(server) == 0


def test_bad_options_are_one_error_line(tiny_run, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert_user_error(tiny_run, ["serve", tiny_run, "--port", port],
                          f"cannot listen on 127.0.0.1:{port}")
    assert_user_error(tiny_run, ["serve", tmp_path / "none", "--port", "0"],
                      "does not exist")
    assert_user_error(tiny_run, ["serve", tiny_run, "--engine", "marian"],
                      "--engine must be one of")


def test_the_listening_socket_sends_without_waiting_for_acks():
    """Accepted connections inherit TCP_NODELAY from it; without it a response written in two
    parts waits for the client's delayed ACK (40 ms a request on Linux loopback)."""
    from mha.cli.serving import _listen

    listening = _listen("127.0.0.1", 0)
    try:
        assert listening.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        listening.close()
