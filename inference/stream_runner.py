"""The running batch's loop (model/stream_decode.py's GreedyStream), and the process it runs in
for `mha serve` (inference/streaming.py starts it and talks to it).

`Runner.step()` first starts queued sentences, a few at a time (JOIN_SHARE, JOIN_STEPS), then
decodes one token for every busy one and returns those that ended. `child` is the process: it
loads the run's model, compiles greedy decoding if told to, says "ready", and then steps
whenever it has work, reading new sentences from its pipe between steps.

Why a process: the server's event loop is Python that runs while the model decodes, and two
threads of one process share one GIL. Each torch call the model's thread makes lets the event
loop's thread take the GIL, and the model then waits for it: measured in one process (en-de
preset run, one thread, bench/stream_speed.py's loop): a step of 32 rows 1.81 ms alone, 2.45 ms
beside a thread doing 0.3 ms of Python every 0.8 ms; one sentence's encoding 1.11 against
1.73 ms. In a process of its own the model shares nothing with the event loop but a pipe.

Messages, each a tuple: to the child ("take", [(key, ids), ...]) and ("stop",); from it
("ready", compile seconds), ("ended", [(key, Hypothesis), ...], counters) and
("failed", [key, ...], message): a step that raised fails the sentences in the batch, and the
batch starts afresh.
"""

from __future__ import annotations

import logging
import signal
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mha.model.decode import Hypothesis
from mha.model.stream_decode import GreedyStream

log = logging.getLogger(__name__)

# Queued sentences join a running batch together, once they are JOIN_SHARE of its busy rows or
# the oldest has waited JOIN_STEPS steps: encoding is mostly a fixed cost a call (measured in
# the stream, en-de preset run, one thread: 1 sentence 1.11 ms, 2: 1.21, 3: 1.36, 4: 1.57).
JOIN_SHARE = 1 / 8
JOIN_STEPS = 3


@dataclass
class Counters:
    """The running batch's share of GET /stats (inference/batcher.py's Stats has the rest)."""

    steps: int = 0  # decoder steps
    rows: int = 0  # busy sentences summed over the steps: rows / steps a step
    joined: int = 0  # sentences that joined a batch already running
    sentences: int = 0  # sentences ended
    largest_batch: int = 0  # most busy sentences in a step
    busy_seconds: float = 0.0  # time in steps and encoding
    busy_cpu_seconds: float = 0.0  # CPU time there


class Runner:
    """Sentences in with `take`, one step of all of them with `step`."""

    def __init__(self, decoder: GreedyStream, max_rows: int) -> None:
        self.decoder, self.max_rows = decoder, max_rows
        self.inbox: deque[tuple[Hashable, list[int]]] = deque()
        self.waiting_since: int | None = None  # the step the inbox's oldest was first passed
        self.counters = Counters()

    @property
    def idle(self) -> bool:
        return not self.inbox and not self.decoder.busy

    def take(self, items: list[tuple[Hashable, list[int]]]) -> None:
        """Queue sentences: (key, source ids ending in EOS), keys distinct."""
        self.inbox.extend(items)

    def step(self) -> list[tuple[Hashable, Hypothesis]]:
        """Start what is due, then one token for every busy sentence; those that ended."""
        start, cpu, counters = time.perf_counter(), time.thread_time(), self.counters
        try:
            self._admit()
            rows = self.decoder.busy
            if not rows:
                return []
            ended = self.decoder.step()
            counters.steps += 1
            counters.rows += rows
            counters.sentences += len(ended)
            counters.largest_batch = max(counters.largest_batch, rows)
            return ended
        finally:
            counters.busy_seconds += time.perf_counter() - start
            counters.busy_cpu_seconds += time.thread_time() - cpu

    def drop(self) -> list[Hashable]:
        """Empty the batch and the queue (after a failed step); their keys."""
        keys = [key for key in self.decoder.keys if key is not None]
        keys += [key for key, _ in self.inbox]
        self.decoder.state, self.decoder.keys, self.decoder.written = None, [], []
        self.inbox.clear()
        return keys

    def _admit(self) -> None:
        """Start queued sentences, as many as the batch has room for, when they are a group
        worth encoding together or the oldest has waited JOIN_STEPS steps; into an idle batch
        at once."""
        busy, steps = self.decoder.busy, self.counters.steps
        if not self.inbox or busy >= self.max_rows:
            return
        if self.waiting_since is None:
            self.waiting_since = steps
        if busy and len(self.inbox) < JOIN_SHARE * busy and steps - self.waiting_since < JOIN_STEPS:
            return
        self.waiting_since = None
        taken = [self.inbox.popleft() for _ in range(min(len(self.inbox), self.max_rows - busy))]
        if busy:
            self.counters.joined += len(taken)
        src_ids = torch.full((len(taken), max(len(ids) for _, ids in taken)), self.decoder.pad,
                             dtype=torch.long)  # (b, S)
        for i, (_, ids) in enumerate(taken):
            src_ids[i, :len(ids)] = torch.tensor(ids)
        device = next(self.decoder.decoder.model.parameters()).device
        self.decoder.add(src_ids.to(device), [key for key, _ in taken])


@dataclass(frozen=True)
class Spec:
    """What the child needs to rebuild the server's decoder."""

    run_dir: Path
    which: str
    device: str
    compile: bool
    threads: int
    max_rows: int


def child(conn, spec: Spec) -> None:
    """The process's body: load, warm up, then serve `conn` until "stop" or the pipe closes.
    SIGINT and SIGTERM are the server's to handle: it drains its requests, then says stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(spec.threads)
    runner, seconds = _load(spec)
    conn.send(("ready", seconds))
    stopping = False
    while not (stopping and runner.idle):
        try:
            while runner.idle or conn.poll():  # blocks only when there is nothing to decode
                message = conn.recv()
                if message[0] == "take":
                    runner.take(message[1])
                stopping = stopping or message[0] == "stop"
                if stopping and runner.idle:
                    return
        except EOFError:  # the server has gone
            return
        try:
            ended = runner.step()
        except Exception as error:  # a bug: the batch's sentences fail, the runner goes on
            log.exception("decoding the running batch failed")  # the server's stderr
            conn.send(("failed", runner.drop(), f"{type(error).__name__}: {error}"))
            continue
        if ended:
            conn.send(("ended", ended, asdict(runner.counters)))


def _load(spec: Spec) -> tuple[Runner, float]:
    from mha.data.tokenizer import Tokenizer
    from mha.inference.fast_decode import FROZEN_MIN_BATCH
    from mha.inference.run import load_model
    from mha.inference.translate import MhaEngine

    model, tokenizer, cfg = load_model(spec.run_dir, spec.which, spec.device)
    engine = MhaEngine(model, tokenizer, cfg.decode, compile=spec.compile)
    steps, decode = engine.greedy_steps(), cfg.decode
    seconds = 0.0
    if spec.compile:  # both compiled decoders, before the first request
        for rows in (1, FROZEN_MIN_BATCH):
            steps(torch.full((rows, 7), Tokenizer.EOS, device=model.output.weight.device),
                  bos=Tokenizer.BOS, eos=Tokenizer.EOS)
        seconds = steps.compile_seconds
    decoder = GreedyStream(steps, bos=Tokenizer.BOS, eos=Tokenizer.EOS,
                           max_len_a=decode.max_len_a, max_len_b=decode.max_len_b,
                           length_penalty=decode.length_penalty)
    return Runner(decoder, spec.max_rows), seconds
