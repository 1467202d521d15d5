"""Plain greedy requests decoded by continuous batching (model/stream_decode.py): `mha serve`'s
way to keep its batch full when each client sends one sentence and waits for its answer.

Whole batches (inference/batcher.py) decode until their longest sentence ends, and a sentence
that arrives meanwhile waits for the next batch. Here a sentence joins the running batch at its
next step, and each one's answer goes back the step it ends: many one-sentence clients decode in
a batch as full as offline batches are, and a lone client's sentence decodes at once, alone.

The batch runs on the batcher's one worker thread, in slices of at most SLICE seconds: each step
first takes the sentences that arrived (while fewer than `max_rows` decode), then decodes one
token for all. Between slices the worker runs whatever else was queued for it (whole batches of
other options, the explore page's pass), so nothing waits more than a slice for the model. When
the stream starts from idle, it first waits up to `window` seconds for `max_rows` sentences, as
a whole batch does.

A sentence whose client has gone is still decoded (its row costs a step or so more); its answer
is dropped. An error fails the requests in the batch, and the batch starts afresh.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

import torch

from mha.inference.batcher import Batcher
from mha.model.decode import Hypothesis
from mha.model.stream_decode import GreedyStream

log = logging.getLogger(__name__)

SLICE = 0.05  # seconds the stream holds the worker before others' work may run


class Stream:
    """`await translate(texts)`: one answer per text, each `answer(hypothesis)` (None for a blank
    line), decoded in the running batch of `decoder` on the batcher's worker; `sources(texts)`
    gives the ids (each ending in EOS, [] for a blank line)."""

    def __init__(self, decoder: GreedyStream, batcher: Batcher, *,
                 sources: Callable[[list[str]], list[list[int]]],
                 answer: Callable[[Hypothesis | None], dict], window: float,
                 max_rows: int) -> None:
        self.decoder, self.batcher, self.sources, self.answer = decoder, batcher, sources, answer
        self.window, self.max_rows = window, max_rows
        self.inbox: deque[tuple[str, asyncio.Future]] = deque()  # filled by the event loop only
        self.running = False  # a task drives the stream
        self.arrived = asyncio.Event()
        self.admitting: list[asyncio.Future] = []  # taken from the inbox, not yet in the batch

    async def translate(self, texts: list[str]) -> list[dict]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in texts]
        self.inbox.extend(zip(texts, futures))
        self.batcher.pending += len(texts)
        self.arrived.set()
        if not self.running:
            self.running = True
            loop.create_task(self._drive())
        try:
            return list(await asyncio.gather(*futures))
        finally:
            self.batcher.pending -= len(texts)
            self.batcher.stats.requests += 1

    async def _drive(self) -> None:
        """Run slices on the worker until no sentence is queued or decoding; the decision to
        stop is made on the event loop, which alone fills the inbox, so none is left behind."""
        loop = asyncio.get_running_loop()
        try:
            await self._gather(loop)
            while self.inbox or self.decoder.busy:
                await loop.run_in_executor(self.batcher.worker, self._slice, loop)
        finally:
            self.running = False

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> None:
        """From idle: wait up to `window` seconds for `max_rows` sentences."""
        start = loop.time()
        while len(self.inbox) < self.max_rows and (left := start + self.window - loop.time()) > 0:
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), left)
            except asyncio.TimeoutError:  # the builtin TimeoutError from Python 3.11 on
                break
        self.batcher.stats.held_seconds += loop.time() - start

    def _slice(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the worker: steps until SLICE seconds have passed (one step at least) or nothing
        is left to decode."""
        stats = self.batcher.stats
        start, cpu, first = time.perf_counter(), time.thread_time(), stats.steps
        try:
            while not (stats.steps > first and time.perf_counter() - start >= SLICE):
                self._admit(loop)
                if not self.decoder.busy:
                    break
                rows = self.decoder.busy
                ended = self.decoder.step()
                stats.steps += 1
                stats.rows += rows
                stats.largest_batch = max(stats.largest_batch, rows)
                if ended:
                    stats.sentences += len(ended)
                    loop.call_soon_threadsafe(self._deliver, [
                        (future, self.answer(hypothesis)) for future, hypothesis in ended])
        except Exception as error:  # a bug: the batch's requests fail (500), the stream goes on
            log.exception("decoding the running batch failed")
            failed = [*self.decoder.keys, *self.admitting]
            self.decoder.state, self.decoder.keys, self.admitting = None, [], []
            loop.call_soon_threadsafe(self._fail, failed, error)
        finally:
            stats.busy_seconds += time.perf_counter() - start
            stats.busy_cpu_seconds += time.thread_time() - cpu

    def _admit(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the queued sentences, as many as the batch has room for."""
        room = self.max_rows - self.decoder.busy
        taken = []
        while self.inbox and len(taken) < room:
            taken.append(self.inbox.popleft())
        if not taken:
            return
        self.admitting = [future for _, future in taken]
        ids = self.sources([text for text, _ in taken])
        blank = [(future, self.answer(None)) for (_, future), row in zip(taken, ids) if not row]
        if blank:
            loop.call_soon_threadsafe(self._deliver, blank)
        joining = [(future, row) for (_, future), row in zip(taken, ids) if row]
        if not joining:
            self.admitting = []
            return
        if self.decoder.busy:
            self.batcher.stats.joined += len(joining)
        width = max(len(row) for _, row in joining)
        src_ids = torch.full((len(joining), width), self.decoder.pad, dtype=torch.long)
        for i, (_, row) in enumerate(joining):
            src_ids[i, :len(row)] = torch.tensor(row)
        device = next(self.decoder.decoder.model.parameters()).device
        self.decoder.add(src_ids.to(device), [future for future, _ in joining])
        self.admitting = []

    @staticmethod
    def _deliver(answers: list[tuple[asyncio.Future, dict]]) -> None:
        for future, answer in answers:
            if not future.done():  # its client has gone
                future.set_result(answer)

    @staticmethod
    def _fail(futures: list, error: Exception) -> None:
        for future in futures:
            if future is not None and not future.done():
                future.set_exception(error)
