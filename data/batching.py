"""Token-bounded, length-bucketed batches with a deterministic, resumable order.

Each epoch shuffles the pairs with a seeded generator, sorts them by length inside large pools
(so neighbours have similar lengths and padding stays small), cuts each pool into batches whose
padded size (rows x longest sequence) stays within `batch_tokens` on both sides, then shuffles the
batch order. The same seed and epoch always give the same batches, so a run can resume at any
position.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from mha.configs.schema import ConfigError
from mha.data.tokenizer import Tokenizer


@dataclass
class Batch:
    src_ids: Tensor  # (B, S), padded
    tgt_in: Tensor  # (B, T): BOS y1 ... yn
    tgt_out: Tensor  # (B, T): y1 ... yn EOS

    @property
    def src_tokens(self) -> int:
        return int(self.src_ids.ne(Tokenizer.PAD).sum())

    @property
    def tgt_tokens(self) -> int:
        return int(self.tgt_out.ne(Tokenizer.PAD).sum())

    @property
    def slots(self) -> int:
        """Token positions on both sides, padding included."""
        return self.src_ids.numel() + self.tgt_out.numel()


class TokenBatches:
    """Batches of pair indices for one dataset, epoch by epoch.

    src_lengths, tgt_lengths: token counts per pair (tgt with BOS and EOS).
    """

    def __init__(self, src_lengths: list[int], tgt_lengths: list[int], batch_tokens: int,
                 seed: int, pool_batches: int = 100) -> None:
        longest = max(max(src_lengths), max(tgt_lengths))
        if longest > batch_tokens:
            raise ConfigError(f"train.batch_tokens ({batch_tokens}) is smaller than the longest "
                             f"sequence ({longest} tokens); raise it or lower data.max_len")
        self.src_lengths = torch.tensor(src_lengths)
        self.tgt_lengths = torch.tensor(tgt_lengths)
        self.batch_tokens, self.seed, self.pool_batches = batch_tokens, seed, pool_batches

    def epoch(self, epoch: int) -> list[list[int]]:
        """All batches of one epoch, in training order."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.src_lengths), generator=generator)
        lengths = torch.maximum(self.src_lengths, self.tgt_lengths)
        mean_length = max(1, int(lengths.float().mean()))
        pool_size = max(1, self.pool_batches * self.batch_tokens // mean_length)
        batches = []
        for start in range(0, len(order), pool_size):
            pool = order[start:start + pool_size]
            pool = pool[lengths[pool].argsort(stable=True)].tolist()
            batches += self._cut(pool)
        shuffle = torch.randperm(len(batches), generator=generator).tolist()
        return [batches[i] for i in shuffle]

    def _cut(self, indices: list[int]) -> list[list[int]]:
        batches, current, longest_src, longest_tgt = [], [], 0, 0
        for i in indices:
            src = max(longest_src, int(self.src_lengths[i]))
            tgt = max(longest_tgt, int(self.tgt_lengths[i]))
            if current and max(src, tgt) * (len(current) + 1) > self.batch_tokens:
                batches.append(current)
                current, src, tgt = [], int(self.src_lengths[i]), int(self.tgt_lengths[i])
            current.append(i)
            longest_src, longest_tgt = src, tgt
        return batches + ([current] if current else [])

    def stream(self, epoch: int, position: int, rank: int = 0,
               world_size: int = 1) -> Iterator[tuple[int, int, list[int]]]:
        """(epoch, position, batch) from a point onwards, forever;
        rank r takes batches r, r+W, ..."""
        while True:
            batches = self.epoch(epoch)
            usable = len(batches) - len(batches) % world_size  # every rank gets as many
            for start in range(position, usable, world_size):
                yield epoch, start + world_size, batches[start + rank]
            epoch, position = epoch + 1, 0


def collate(src: list[list[int]], tgt: list[list[int]], pad_id: int = Tokenizer.PAD) -> Batch:
    """Pad a batch: src lists of ids (ending in EOS), tgt lists (BOS ... EOS)."""
    def pad(rows: list[list[int]]) -> Tensor:
        out = torch.full((len(rows), max(map(len, rows))), pad_id, dtype=torch.long)
        for row, ids in enumerate(rows):
            out[row, :len(ids)] = torch.as_tensor(ids)
        return out

    tgt_ids = pad(tgt)
    return Batch(pad(src), tgt_ids[:, :-1], tgt_ids[:, 1:])
