"""Continuous batching (model/stream_decode.py): sentences that join a running batch at other
steps, with other source lengths and length limits, each get the hypothesis `greedy` gives;
free rows are taken again, a half-free batch shrinks, an idle one is dropped."""

from __future__ import annotations

import pytest
import torch

from mha.model.decode import greedy
from mha.model.static_decode import StaticGreedy
from mha.model.stream_decode import GreedyStream
from tests.test_fast_decode import assert_same, ending, varied_sources
from tests.test_search import BOS, EOS, LIMITS, PAD, make

pytestmark = pytest.mark.usefixtures("_one_thread")


def trimmed(src: torch.Tensor) -> torch.Tensor:
    """src (b, S) cut to its longest real source: each group comes with its own length."""
    return src[:, :int(src.ne(PAD).sum(dim=1).max())]


def stream_decode(model, src: torch.Tensor, joins: dict[int, list[int]], limits: dict):
    """Decode src's rows with a GreedyStream, the rows joins[step] joining before that step;
    returns the hypotheses in row order and the batch's rows after each step."""
    options = {key: value for key, value in limits.items() if key not in ("bos", "eos")}
    stream = GreedyStream(StaticGreedy(model), bos=BOS, eos=EOS, **options)
    found, rows, step = {}, [], 0
    while len(found) < len(src):
        if step in joins:
            stream.add(trimmed(src[joins[step]]), joins[step])
        if stream.busy:
            found.update(stream.step())
            rows.append(len(stream.keys))
        step += 1
    return [found[row] for row in range(len(src))], rows, stream


@pytest.mark.parametrize(("seed", "eos_bias"), [(0, 0.8), (4, 0.6)])
@pytest.mark.parametrize("length_penalty", [1.0, 0.6])
def test_sentences_joining_at_other_steps_get_greedys_hypotheses(seed, eos_bias, length_penalty):
    model, src = ending(seed, eos_bias), varied_sources()
    limits = {**LIMITS, "length_penalty": length_penalty}
    expected = greedy(model, src, **limits)
    # row 7 (one token) starts alone; longer sources and caches join later, some after a gap
    joins = {0: [7], 2: [2, 5], 3: [0], 6: [1, 3, 4], 9: [6, 8]}
    got, rows, stream = stream_decode(model, src, joins, limits)
    assert_same(expected, got)
    assert max(rows) >= 3  # they decoded side by side
    assert stream.state is None and stream.keys == []  # dropped once idle


def test_free_rows_are_taken_again_and_a_half_free_batch_shrinks():
    model, src = ending(4, 0.6), varied_sources()
    expected = greedy(model, src, **LIMITS)
    lengths = [len(h.ids) for h in expected]
    first = sorted(range(len(src)), key=lambda row: lengths[row])[:4]  # the soonest to end
    later = [row for row in range(len(src)) if row not in first]
    # four start; the other five join one at a time, after the first four have had time to end
    joins = {0: first, **{step: [row] for step, row in zip(range(12, 40, 3), later)}}
    got, rows, _ = stream_decode(model, src, joins, LIMITS)
    assert_same(expected, got)
    assert max(rows) < len(src)  # a joining sentence took a free row
    assert 1 in rows  # the last ones alone: a batch of four with three free rows shrank


def test_a_sentence_at_its_length_limit_leaves_its_row_clean():
    model, src = make(4), varied_sources()  # no raised EOS: most rows run to their cap
    limits = {**LIMITS, "max_len_a": 0.5, "max_len_b": 2}
    expected = greedy(model, src, **limits)
    assert sum(len(h.ids) == 0.5 * 8 + 2 for h in expected) >= 2
    joins = {0: [0, 1], 1: [2], 4: [3, 4, 5], 7: [6, 7, 8]}
    assert_same(expected, stream_decode(model, src, joins, limits)[0])
