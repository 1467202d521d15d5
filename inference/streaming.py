"""Plain greedy requests decoded by continuous batching (model/stream_decode.py): `mha serve`'s
way to keep its batch full when each client sends one sentence and waits for its answer.

Whole batches (inference/batcher.py) decode until their longest sentence ends, and a sentence
that arrives meanwhile waits for the next batch. Here a sentence joins the running batch within
a few steps, and each one's answer goes back the step it ends: many one-sentence clients decode
in a batch as full as offline batches are, and a lone client's sentence decodes at once, alone.

The running batch lives in a process of its own (inference/stream_runner.py says why and runs
it), started with the server and ready once its model is loaded and compiled; until then greedy
requests take the whole-batch path. Here, on the event loop, texts become source ids, go down
the pipe, and the hypotheses that come back become answers; at most `max_rows` sentences decode
at once. When the batch is idle, the first sentence waits up to `window` seconds for
`max_rows`, as a whole batch does.

A sentence whose client has gone is still decoded; its answer is dropped. A step that fails
fails the requests in the batch (500); if the process ends, the requests it held fail and greedy
requests take the whole-batch path from then on.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
from collections.abc import Callable
from dataclasses import fields

from mha.inference.batcher import Batcher
from mha.inference.stream_runner import Counters, Spec, child
from mha.model.decode import Hypothesis

log = logging.getLogger(__name__)


class Stream:
    """`await translate(texts)`: one answer per text, each `answer(hypothesis)` (None for a blank
    line); `sources(texts)` gives the ids (each ending in EOS, [] for a blank line). `ready`
    once the process has said so; `start()` inside the running event loop, `close()` last."""

    def __init__(self, spec: Spec, batcher: Batcher, *,
                 sources: Callable[[list[str]], list[list[int]]],
                 answer: Callable[[Hypothesis | None], dict], window: float) -> None:
        self.spec, self.batcher, self.sources, self.answer = spec, batcher, sources, answer
        self.stats, self.window = batcher.stats, window
        self.sent = 0  # sentences down the pipe, not yet answered
        self.ready = self.broken = False
        self.futures: dict[int, asyncio.Future] = {}  # sentences sent, not yet answered
        self.held: list[tuple[int, list[int]]] = []  # waiting out the window
        self.window_ends: asyncio.TimerHandle | None = None
        self.keys = itertools.count()
        self.counted = Counters()  # the process's counters, as last added to stats
        self.process = self.conn = None

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")  # no copy of this process's threads
        self.conn, theirs = context.Pipe()
        self.process = context.Process(target=child, args=(theirs, self.spec), daemon=True,
                                       name="mha-stream")
        self.process.start()
        theirs.close()
        asyncio.get_running_loop().add_reader(self.conn.fileno(), self._receive)

    async def close(self) -> None:
        """Tell the process to stop once its sentences are done, and wait for it."""
        if self.process is None:
            return
        asyncio.get_running_loop().remove_reader(self.conn.fileno())
        if not self.broken:
            self.conn.send(("stop",))
        await asyncio.get_running_loop().run_in_executor(None, self.process.join, 60)
        if self.process.is_alive():
            self.process.kill()
        self.conn.close()

    @property
    def usable(self) -> bool:
        return self.ready and not self.broken

    def report(self) -> dict:
        """For GET /stats: the process's state and pid."""
        state = "ended" if self.broken else "ready" if self.ready else "starting"
        return {"stream": state, "stream_pid": self.process.pid if self.process else None}

    async def translate(self, texts: list[str]) -> list[dict]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in texts]
        items = []
        for ids, future in zip(self.sources(texts), futures):
            if ids:
                key = next(self.keys)
                self.futures[key] = future
                items.append((key, ids))
            else:
                future.set_result(self.answer(None))
        self.batcher.pending += len(texts)
        self._send(items)
        try:
            return list(await asyncio.gather(*futures))
        finally:
            self.batcher.pending -= len(texts)
            self.stats.requests += 1

    def _send(self, items: list[tuple[int, list[int]]]) -> None:
        """Down the pipe, or held for the window when the batch is idle."""
        if self.window > 0 and items and (self.held or not self.sent):
            if not self.held:  # the first sentence for an idle batch: its window opens
                self.window_ends = asyncio.get_running_loop().call_later(self.window, self._flush)
            self.held += items
            if len(self.held) >= self.spec.max_rows:
                self._flush()
        elif items:
            self._take(items)

    def _flush(self) -> None:
        if self.window_ends is not None:
            self.window_ends.cancel()
            self.window_ends = None
        held, self.held = self.held, []
        if held:
            self._take(held)

    def _take(self, items: list[tuple[int, list[int]]]) -> None:
        self.sent += len(items)
        try:
            self.conn.send(("take", items))
        except OSError:  # the process has ended; the pipe's end, read, says so too
            self._ended()

    def _ended(self) -> None:
        if self.broken:
            return
        self.broken = True
        self._on_failed(list(self.futures), "the decoding process ended")
        asyncio.get_running_loop().remove_reader(self.conn.fileno())
        log.error("the decoding process ended (exit code %s): greedy requests now decode in "
                  "whole batches", self.process.exitcode)

    def _receive(self) -> None:
        """The process's messages, on the event loop (the pipe is readable)."""
        try:
            while self.conn.poll():
                message = self.conn.recv()
                getattr(self, f"_on_{message[0]}")(*message[1:])
        except (EOFError, OSError):
            self._ended()

    def _on_ready(self, seconds: float) -> None:
        self.ready = True
        log.info("the running batch's process is ready (compiled in %.1f s)", seconds)

    def _on_ended(self, ended: list[tuple[int, Hypothesis]], counters: dict) -> None:
        self.sent -= len(ended)
        for key, hypothesis in ended:
            future = self.futures.pop(key)
            if not future.done():  # its client has gone
                future.set_result(self.answer(hypothesis))
        now = Counters(**counters)
        for name in (f.name for f in fields(Counters)):
            value, before = getattr(now, name), getattr(self.counted, name)
            if name == "largest_batch":
                self.stats.largest_batch = max(self.stats.largest_batch, value)
            else:
                setattr(self.stats, name, getattr(self.stats, name) + value - before)
        self.counted = now

    def _on_failed(self, keys: list[int], message: str) -> None:
        log.error("decoding the running batch failed: %s", message)
        self.sent -= len(keys)
        for key in keys:
            future = self.futures.pop(key, None)
            if future is not None and not future.done():
                future.set_exception(RuntimeError(message))
