"""Continuous batching of greedy decoding: sentences join a running batch and leave it as each
ends, instead of a batch running until its longest sentence ends. A server whose clients each
send one sentence at a time (inference/streaming.py) keeps its batch full this way: a sentence
that arrives while others decode starts at the next step, beside them.

The batch is model/static_decode.py's StaticState, whose rows are slots. Each row sits at its
own position (state.pos), so rows that started at different steps share one step. A row whose
sentence ended is free: it stays in the batch, finished (it feeds padding and changes nothing),
until a new sentence takes its slot; a sentence that finds no free slot makes the batch one row
longer. Sentences longer than any in the batch pad every row's source (masked) or cache (not yet
written, so masked too) to their length. When more than half the rows are free, the batch keeps
only the busy ones; when none is busy, it is dropped.

Each sentence gets the hypothesis `greedy` gives it alone (tests/test_stream_decode.py), up to
the rounding of a batch of another size.

Legend: B rows, b sentences joining, S source length, T cache length, L decoder layers.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import fields
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from mha.model.decode import Hypothesis, _strip
from mha.model.static_decode import StaticState, start_state

BATCH_DIM = {"cross_kv": 2}  # the fields whose rows are not their first dimension
SOURCE_DIM = {"cross_kv": 4, "src_keep": 3}  # each field's source positions
CACHE_DIM = {"self_k": 2, "self_v": 2, "out": 1}  # and its output positions


class Steps(Protocol):
    """What the stream needs from a decoder: StaticGreedy, or inference/fast_decode.py's
    CompiledGreedy, which picks a compiled graph by the batch's rows."""

    model: torch.nn.Module

    def encode(self, src_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]: ...

    def step(self, state: StaticState, eos: int, T: int) -> None: ...


class GreedyStream:
    """`add(src_ids, keys)` starts sentences; `step()` decodes one token for each and returns
    (key, Hypothesis) for those that ended. `busy`: the sentences decoding."""

    def __init__(self, decoder: Steps, *, bos: int, eos: int, max_len_a: float = 1.5,
                 max_len_b: int = 10, length_penalty: float = 1.0) -> None:
        self.decoder, self.bos, self.eos = decoder, bos, eos
        self.max_len_a, self.max_len_b, self.length_penalty = max_len_a, max_len_b, length_penalty
        self.pad = decoder.model.pad_id
        self.state: StaticState | None = None
        self.keys: list[Hashable | None] = []  # per row, its sentence's key; None: free
        self.written: list[int] = []  # per row, the tokens its sentence has (its position)

    @property
    def busy(self) -> int:
        return sum(key is not None for key in self.keys)

    @torch.inference_mode()
    def add(self, src_ids: Tensor, keys: list[Hashable]) -> None:
        """src_ids (b, S): sentences that start at the next step, under `keys` (distinct)."""
        if src_ids.shape[1] == 1:  # a source of one token: two, as StaticGreedy pads it
            src_ids = F.pad(src_ids, (0, 1), value=self.pad)  # (b, 2)
        kv, src_keep, src_pad_mask = self.decoder.encode(src_ids.clone())
        new = start_state(self.decoder.model, kv, src_keep, src_pad_mask, bos=self.bos,
                          max_len_a=self.max_len_a, max_len_b=self.max_len_b)
        if self.state is None:
            self.state, self.keys, self.written = new, list(keys), [0] * len(keys)
            return
        S = max(state.src_keep.shape[3] for state in (self.state, new))
        T = max(state.out.shape[1] for state in (self.state, new))
        state, new = _padded(self.state, S, T, self.pad), _padded(new, S, T, self.pad)
        free = [row for row, key in enumerate(self.keys) if key is None][:len(keys)]
        if free:
            _put(state, torch.tensor(free, device=state.pos.device), new, len(free))
            for row, key in zip(free, keys):
                self.keys[row], self.written[row] = key, 0
        if len(free) < len(keys):
            state = _joined(state, new.select(torch.arange(len(free), len(keys))))
            self.keys += keys[len(free):]
            self.written += [0] * (len(keys) - len(free))
        self.state = state

    @torch.inference_mode()
    def step(self) -> list[tuple[Hashable, Hypothesis]]:
        """One token for every busy sentence; the sentences that ended, with their hypotheses."""
        state = self.state
        busy = [row for row, key in enumerate(self.keys) if key is not None]
        # the cache's slots up to the furthest position a sentence writes: no further is read
        self.decoder.step(state, self.eos, max(max(self.written[row] for row in busy) + 1, 2))
        for row in busy:
            self.written[row] += 1
        done = state.done.tolist()
        ended = [row for row, key in enumerate(self.keys) if key is not None and done[row]]
        if not ended:
            return []
        rows = torch.tensor(ended, device=state.pos.device)
        found = []
        for row, ids, total, length in zip(ended, state.out[rows].tolist(),
                                           state.log_prob[rows].tolist(),
                                           state.length[rows].tolist()):
            hypothesis = Hypothesis(total / length ** self.length_penalty, total,
                                    _strip(ids[:length], self.eos, self.pad))
            found.append((self.keys[row], hypothesis))
            self.keys[row] = None
        self._shrink()
        return found

    def _shrink(self) -> None:
        """No busy row: drop the batch; more free rows than busy ones: keep the busy ones."""
        busy = [row for row, key in enumerate(self.keys) if key is not None]
        if not busy:
            self.state, self.keys, self.written = None, [], []
        elif 2 * len(busy) < len(self.keys):
            self.state = self.state.select(torch.tensor(busy, device=self.state.pos.device))
            self.keys = [self.keys[row] for row in busy]
            self.written = [self.written[row] for row in busy]


def _map(change: Callable[..., Tensor], *states: StaticState) -> StaticState:
    """A StaticState of change(name, *tensors), field by field (layer by layer for lists)."""
    def apply(name: str, *values):
        if isinstance(values[0], list):
            return [change(name, *layer) for layer in zip(*values)]
        return change(name, *values)

    return StaticState(*(apply(f.name, *(getattr(s, f.name) for s in states))
                         for f in fields(StaticState)))


def _padded(state: StaticState, S: int, T: int, pad: int) -> StaticState:
    """`state` with S source positions (the new ones masked) and T cache slots (not yet
    written, so masked too)."""
    def grow(name: str, tensor: Tensor) -> Tensor:
        dim, size = ((SOURCE_DIM[name], S) if name in SOURCE_DIM
                     else (CACHE_DIM[name], T) if name in CACHE_DIM else (None, 0))
        if dim is None or tensor.shape[dim] == size:
            return tensor
        widths = [0, 0] * (tensor.dim() - dim - 1) + [0, size - tensor.shape[dim]]
        value = False if tensor.dtype == torch.bool else pad if name == "out" else 0
        return F.pad(tensor, widths, value=value)

    return _map(grow, state)


def _put(state: StaticState, rows: Tensor, new: StaticState, count: int) -> None:
    """Write `new`'s first `count` rows into `state`'s rows `rows`, in place."""
    def write(name: str, tensor: Tensor, source: Tensor) -> Tensor:
        dim = BATCH_DIM.get(name, 0)
        return tensor.index_copy_(dim, rows, source.narrow(dim, 0, count))

    _map(write, state, new)


def _joined(state: StaticState, new: StaticState) -> StaticState:
    """`state`'s rows, then `new`'s."""
    return _map(lambda name, a, b: torch.cat([a, b], dim=BATCH_DIM.get(name, 0)), state, new)
