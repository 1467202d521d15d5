"""Requests that arrive together are decoded together: `mha serve`'s batching, on one worker thread.

Each request's sentences join one queue. A collector task on the event loop takes the first
waiting sentence, then whatever else arrives within `window` seconds, up to `max_batch`
sentences, and hands them to the worker thread, which decodes them as one call per set of
decoding options (sentences with other options cannot share a batch). While the worker decodes,
new sentences queue up, so under load each batch fills from the queue without waiting.

Clients that wait for their answer before sending again (on the same connection: `client`)
come back together. Once the worker is free, the collector waits for the clients the last batch
answered, but no longer than `patience` times that batch's decoding time; taking what is queued
at once would split them into two half batches that alternate, each decoded at half the batch
size's efficiency (measured in bench/serve_load.py; README). A lone client is waited for alone,
which is no wait. Clients that do not come back (requests that arrive on their own, a
connection per request) are not waited for: each free period is judged afterwards, and the next
one waits only if every client answered before it came back within the patience, waited for or
not; otherwise a wait would only add to each request's latency (measured with requests arriving
on their own: README).

Every other model call (`run`: the explore page's attention pass, the warm-up) goes to the same
one thread, so the model never runs twice at once and the event loop never waits on it.

A request whose client has gone still gets its sentences decoded (a half-done batch is not worth
splitting); its answer is dropped. A decoding error fails that batch's requests, not the worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)

PATIENCE = 0.5  # the longest wait for the last batch's clients, in units of its decoding time
Decode = Callable[[Hashable, list[Any]], list[Any]]  # (options, items) -> one result per item


@dataclass
class Stats:
    """What the server exposes (GET /stats): merging shows as batches below sentences."""

    requests: int = 0  # translation requests answered or failed
    sentences: int = 0  # sentences decoded
    batches: int = 0  # calls of `decode`: one per whole batch and set of options
    largest_batch: int = 0  # most sentences decoded together (a call, or a running batch's step)
    calls: int = 0  # other calls on the worker (explore, warm-up)
    busy_seconds: float = 0.0  # the worker's time in `decode`
    busy_cpu_seconds: float = 0.0  # and its CPU time there (others' load inflates the first)
    held_seconds: float = 0.0  # time the worker was free, a sentence queued, waiting for more
    # continuous batching (inference/streaming.py): plain greedy requests
    steps: int = 0  # decoder steps of the running batch
    rows: int = 0  # sentences decoding, summed over those steps: rows / steps a step
    joined: int = 0  # sentences that joined a batch already running


@dataclass
class _Item:
    options: Hashable
    value: Any
    future: asyncio.Future
    client: Hashable | None  # the connection it came on, None if unknown


class Batcher:
    """`await translate(options, items)`: results in order, decoded in merged batches by
    `decode(options, items)` on the one worker thread. Start with `start()` inside the running
    event loop; `close()` after the last request."""

    def __init__(self, decode: Decode, *, window: float, max_batch: int,
                 patience: float = PATIENCE) -> None:
        self.decode, self.window, self.max_batch = decode, window, max_batch
        self.patience = patience
        self.stats = Stats()
        self.pending = 0  # sentences of requests not yet answered
        self.answered: set[Hashable] = set()  # the clients of the last batch
        self.trusted = True  # they came back within the last patience: wait for them again
        self.free_since = 0.0  # event-loop time the last batch ended
        self.patience_ends = 0.0  # and the longest wait that followed
        self.last_decode = 0.0  # seconds the last batch took to decode
        self.arrivals: list[tuple[float, Hashable]] = []  # (time, client) since free_since
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mha-model")
        self.queue: asyncio.Queue[_Item] | None = None
        self.collector: asyncio.Task | None = None

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.collector = asyncio.get_running_loop().create_task(self._collect())

    async def close(self) -> None:
        """Stop collecting and let the worker finish what it holds."""
        if self.collector is not None:
            self.collector.cancel()
            await asyncio.gather(self.collector, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(None, self.worker.shutdown)

    @property
    def queued(self) -> int:
        return self.queue.qsize() if self.queue is not None else 0

    async def translate(self, options: Hashable, items: list[Any],
                        client: Hashable | None = None) -> list[Any]:
        """Queue `items` (one request's sentences, from `client`: its connection) and wait for
        their results."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        for item, future in zip(items, futures):
            self.queue.put_nowait(_Item(options, item, future, client))
        self.pending += len(items)
        if client is not None:
            self.arrivals.append((loop.time(), client))
        try:
            return list(await asyncio.gather(*futures))
        finally:
            self.pending -= len(items)
            self.stats.requests += 1

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run fn(*args) on the worker thread, between batches."""
        self.stats.calls += 1
        return await asyncio.get_running_loop().run_in_executor(self.worker, fn, *args)

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            first = loop.time()
            window_ends = first + self.window
            missing = (self.answered if self.trusted else set()) - {items[0].client}
            while len(items) < self.max_batch:
                if self.queue.empty():
                    left = max(window_ends, self.patience_ends if missing else 0.0) - loop.time()
                    if left <= 0:
                        break
                    try:
                        items.append(await asyncio.wait_for(self.queue.get(), left))
                    except asyncio.TimeoutError:  # the builtin TimeoutError from Python 3.11 on
                        break
                else:
                    items.append(self.queue.get_nowait())
                missing = missing - {items[-1].client}
            self.stats.held_seconds += loop.time() - first
            await self._decode(items)
            self._free(loop.time(), items)

    def _free(self, now: float, items: list[_Item]) -> None:
        """The worker is free: judge the last free period, then expect this batch's clients."""
        end = min(self.patience_ends, now)
        came = {client for at, client in self.arrivals if self.free_since <= at <= end}
        self.trusted = self.answered <= came
        self.answered = {item.client for item in items if item.client is not None}
        self.free_since, self.arrivals = now, []
        self.patience_ends = now + self.patience * self.last_decode

    async def _decode(self, items: list[_Item]) -> None:
        groups: dict[Hashable, list[_Item]] = {}
        for item in items:
            if not item.future.done():  # a cancelled request's sentences are skipped
                groups.setdefault(item.options, []).append(item)
        for options, group in groups.items():
            try:
                results = await asyncio.get_running_loop().run_in_executor(
                    self.worker, self._timed, options, [item.value for item in group])
            except Exception as error:  # a bug: its requests fail (500), the worker goes on
                log.exception("decoding a batch of %d sentences failed", len(group))
                results = None
                for item in group:
                    if not item.future.done():
                        item.future.set_exception(error)
            if results is None:
                continue
            self.stats.batches += 1
            self.stats.sentences += len(group)
            self.stats.largest_batch = max(self.stats.largest_batch, len(group))
            for item, result in zip(group, results):
                if not item.future.done():
                    item.future.set_result(result)

    def _timed(self, options: Hashable, values: list[Any]) -> list[Any]:
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            return self.decode(options, values)
        finally:
            self.last_decode = time.perf_counter() - start
            self.stats.busy_seconds += self.last_decode
            self.stats.busy_cpu_seconds += time.thread_time() - cpu

    def report(self) -> dict:
        return {**asdict(self.stats), "queued": self.queued, "pending": self.pending,
                "window": self.window, "max_batch": self.max_batch, "patience": self.patience,
                "expected": len(self.answered) if self.trusted else 0}
