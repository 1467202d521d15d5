"""The running batch's loop (inference/stream_runner.py) without a server or a process: a
sentence queued while others decode joins them, a few at a time, each gets `greedy`'s
hypothesis, the counters say what happened, and a failed step drops the batch and the queue.
The process and the server around it: test_serve.py."""

from __future__ import annotations

import pytest
import torch

from mha.inference.stream_runner import JOIN_STEPS, Runner
from mha.model.decode import greedy
from mha.model.static_decode import StaticGreedy
from mha.model.stream_decode import GreedyStream
from tests.test_search import BOS, EOS, LIMITS, make

pytestmark = pytest.mark.usefixtures("_one_thread")
SOURCES = {key: [5 + (7 * key + i) % 34 for i in range(3 + key % 12)] + [EOS]
           for key in range(20)}  # lengths 4 to 15


def runner(max_rows: int = 16) -> tuple[Runner, object]:
    model = make(5)
    decoder = GreedyStream(StaticGreedy(model), bos=BOS, eos=EOS, max_len_a=1.0, max_len_b=6)
    return Runner(decoder, max_rows), model


def run(runner: Runner, joins: dict[int, list[int]]) -> tuple[dict, list[int]]:
    """Step until idle, the keys joins[n] taken before step n; (hypotheses by key, busy rows
    at each step)."""
    found, rows, n = {}, [], 0
    while n <= max(joins) or not runner.idle:
        runner.take([(key, SOURCES[key]) for key in joins.get(n, [])])
        busy = runner.counters.rows
        found.update(runner.step())
        rows.append(runner.counters.rows - busy)
        n += 1
    return found, rows


def expected(model, key: int) -> list[int]:
    return greedy(model, torch.tensor([SOURCES[key]]), **LIMITS)[0].ids


def test_sentences_queued_while_others_decode_join_them_a_few_at_a_time():
    loop, model = runner()
    first = list(range(8))
    joins = {0: first, 1: [8], 2: [9, 10]}  # a group: 1/8 of the busy rows (1 of 8, 2 of 9)
    found, rows = run(loop, joins)
    assert {key: h.ids for key, h in found.items()} == {key: expected(model, key)
                                                       for key in range(11)}
    assert rows[:3] == [8, 9, 11]
    assert loop.counters.joined == 3 and loop.counters.largest_batch == 11
    assert loop.counters.sentences == 11 and loop.counters.steps == sum(r > 0 for r in rows)


def test_a_lone_sentence_waits_for_a_group_or_at_most_join_steps():
    loop, model = runner(max_rows=32)
    loop.take([(key, SOURCES[key]) for key in range(16)])
    loop.step()
    loop.take([(16, SOURCES[16])])  # 16 busy: a group is 2
    for _ in range(JOIN_STEPS):
        loop.step()
        assert loop.counters.joined == 0
    loop.step()
    assert loop.counters.joined == 1
    found, _ = run(loop, {0: []})
    assert found[16].ids == expected(model, 16)


def test_the_batch_holds_at_most_max_rows():
    loop, model = runner(max_rows=4)
    found, rows = run(loop, {0: list(range(10))})
    assert max(rows) == 4 and len(found) == 10
    assert {key: h.ids for key, h in found.items()} == {key: expected(model, key)
                                                       for key in range(10)}


def test_a_failed_step_drops_the_batch_and_the_queue():
    loop, model = runner(max_rows=2)
    loop.take([(key, SOURCES[key]) for key in range(3)])
    loop.step()
    assert sorted(loop.drop()) == [0, 1, 2] and loop.idle and loop.decoder.state is None
    loop.take([(7, SOURCES[7])])
    found, _ = run(loop, {0: []})
    assert found[7].ids == expected(model, 7)
