"""inference/streaming.py without a server: requests decode in one running batch on the
batcher's worker, a request sent while others decode joins them, each gets its own answer
(`greedy`'s), other work on the worker runs between slices, and a failing step fails only the
requests in the batch."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from mha.inference import streaming
from mha.inference.batcher import Batcher
from mha.inference.streaming import Stream
from mha.model.decode import greedy
from mha.model.static_decode import StaticGreedy
from mha.model.stream_decode import GreedyStream
from tests.test_batcher import run
from tests.test_search import BOS, EOS, LIMITS, PAD, make

pytestmark = pytest.mark.usefixtures("_one_thread")
OPTIONS = {"max_len_a": 1.0, "max_len_b": 6}


def ids(text: str) -> list[int]:
    """A 'sentence' here is its ids, space-separated, EOS added; blank: none."""
    return [*map(int, text.split()), EOS] if text.strip() else []


def expected(model, text: str) -> list[int] | None:
    return greedy(model, torch.tensor([ids(text)]), **LIMITS)[0].ids if text.strip() else None


class Recording(GreedyStream):
    """A GreedyStream that notes each step's busy rows, and can hold its first step until
    `go` is set."""

    def __init__(self, model) -> None:
        super().__init__(StaticGreedy(model), bos=BOS, eos=EOS, **OPTIONS)
        self.rows: list[int] = []
        self.started, self.go = threading.Event(), threading.Event()
        self.go.set()

    def step(self):
        self.rows.append(self.busy)
        self.started.set()
        self.go.wait(timeout=60)
        return super().step()


def stream_of(decoder: GreedyStream, window: float = 0.0, max_rows: int = 8):
    batcher = Batcher(lambda options, items: items, window=0.0, max_batch=8)
    return batcher, Stream(decoder, batcher, sources=lambda texts: [ids(t) for t in texts],
                           answer=lambda h: None if h is None else h.ids, window=window,
                           max_rows=max_rows)


def test_a_request_sent_while_others_decode_joins_them_and_each_gets_its_own_answer():
    model = make(5)
    decoder = Recording(model)
    first = ["5 6 7 8 9 10 11", "12 13", ""]  # one batch; a blank line answers at once
    later = ["14 15 16 17", "18 19 20 21 22 23"]

    async def main():
        batcher, stream = stream_of(decoder, window=1.0, max_rows=8)
        batcher.start()
        decoder.go.clear()  # the first step waits until `later` is queued
        task = asyncio.ensure_future(stream.translate(first))
        await asyncio.get_running_loop().run_in_executor(None, decoder.started.wait, 60)
        joining = asyncio.ensure_future(stream.translate(later))
        await asyncio.sleep(0)  # queued
        decoder.go.set()
        answers = await asyncio.wait_for(asyncio.gather(task, joining), 60)
        await batcher.close()
        return answers, batcher.stats

    (got_first, got_later), stats = run_async(main)
    assert got_first == [expected(model, t) for t in first]
    assert got_later == [expected(model, t) for t in later]
    assert decoder.rows[0] == 2 and max(decoder.rows) == 4  # the later two joined the first two
    assert (stats.joined, stats.sentences, stats.requests, stats.largest_batch) == (2, 4, 2, 4)
    assert stats.steps == len(decoder.rows) and stats.rows == sum(decoder.rows)
    assert decoder.state is None  # idle: dropped


def test_other_work_on_the_worker_runs_between_slices(monkeypatch):
    monkeypatch.setattr(streaming, "SLICE", 0.0)  # a step a slice
    decoder = Recording(make(5))

    async def main():
        batcher, stream = stream_of(decoder)
        batcher.start()
        decoder.go.clear()
        task = asyncio.ensure_future(stream.translate(["5 6 7 8 9 10 11 12 13"]))
        await asyncio.get_running_loop().run_in_executor(None, decoder.started.wait, 60)
        other = asyncio.ensure_future(batcher.run(lambda: len(decoder.rows)))
        await asyncio.sleep(0)
        decoder.go.set()
        steps_before_other = await asyncio.wait_for(other, 60)
        await asyncio.wait_for(task, 60)
        await batcher.close()
        return steps_before_other

    steps_before_other = run_async(main)
    assert steps_before_other < len(decoder.rows)  # it did not wait for the sentence to end


def test_a_failing_step_fails_the_batchs_requests_and_the_next_request_decodes():
    model = make(5)
    decoder = Recording(model)
    failing = iter([True])

    def step():
        if next(failing, False):
            raise RuntimeError("a broken step")
        return Recording.step(decoder)

    decoder.step = step

    async def main():
        batcher, stream = stream_of(decoder)
        batcher.start()
        with pytest.raises(RuntimeError, match="a broken step"):
            await asyncio.wait_for(stream.translate(["5 6 7", "8 9"]), 60)
        answer = await asyncio.wait_for(stream.translate(["8 9"]), 60)
        await batcher.close()
        return answer

    assert run_async(main) == [expected(model, "8 9")]


def run_async(main):
    """main()'s result, run by test_batcher's `run` (an event loop in a thread of its own)."""
    result = []

    async def keep():
        result.append(await main())

    run(keep)
    return result[0]


assert PAD == 0  # ids() never makes padding: real ids start at 5
