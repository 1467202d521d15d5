"""Subword regularization: each training batch gets a fresh, seeded segmentation of its text.

With `train.subword_sampling` > 0 the text of every training batch is encoded again with
SentencePiece sampling: BPE-dropout (each merge skipped with that probability; Provilkov et al.
2020) for a bpe model, a segmentation drawn from the lattice with smoothing alpha (Kudo 2018) for
a unigram one; the source side always, the target side too with `train.subword_sampling_tgt`.
Validation and test keep the deterministic segmentation that `prepare` stored.

Exact resume: a batch's draw is seeded from (seed, epoch, position, rank, side) alone.

The token bound: a sampled segmentation is longer (the README gives the figure), so TokenBatches
cuts batches from the stored lengths times a margin: the 90th percentile of the ratio sampled /
stored length, measured once on an evenly spread sample of training pairs. A batch
of R rows then allows batch_tokens // R ids a row (and data.max_len subwords); a row whose sampled
ids are longer keeps its stored ids, which always fit. So every batch stays within batch_tokens on
both sides, padding included, and roughly one row in ten keeps its deterministic segmentation.
"""

from __future__ import annotations

import hashlib
import logging
import math

import datasets
import numpy as np
import pyarrow.compute as pc

from mha.configs.schema import Config
from mha.data.batching import Batch, TokenBatches, collate
from mha.data.prepare import Prepared
from mha.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)

MARGIN_QUANTILE = 0.9  # of the length ratio: the share of rows that fit their planned room
MARGIN_PAIRS = 2000  # training pairs the ratio is measured on


class SubwordSampler:
    """Rows of a training batch -> a padded Batch, their segmentation sampled when alpha > 0.

    margins: (source, target) factors the planned lengths carry; 1.0 when nothing is sampled.
    """

    def __init__(self, tokenizer: Tokenizer, alpha: float, sample_tgt: bool, batch_tokens: int,
                 max_len: int, seed: int, margins: tuple[float, float] = (1.0, 1.0)) -> None:
        self.tokenizer, self.alpha, self.sample_tgt = tokenizer, alpha, sample_tgt
        self.batch_tokens, self.max_len, self.seed = batch_tokens, max_len, seed
        self.margins = margins

    @classmethod
    def from_config(cls, cfg: Config, prepared: Prepared) -> SubwordSampler:
        """The sampler cfg.train asks for; when it samples, its margins measured on the
        training split."""
        settings = cfg.train
        sampler = cls(prepared.tokenizer, settings.subword_sampling, settings.subword_sampling_tgt,
                      settings.batch_tokens, cfg.data.max_len, settings.seed)
        if sampler.alpha:
            means, sampler.margins = sampler.measure(prepared.splits["train"])
            log.info("subword sampling %g: sampled segmentations are %.2fx (src) and %.2fx (tgt) "
                     "as long; batches are planned for %.2fx and %.2fx", sampler.alpha, *means,
                     *sampler.margins)
        return sampler

    @property
    def columns(self) -> list[str]:
        """The training split's columns that `collate` reads."""
        return ["src_ids", "tgt_ids", "src", "tgt"] if self.alpha else ["src_ids", "tgt_ids"]

    def token_batches(self, train: datasets.Dataset) -> TokenBatches:
        """The batches of `train`, cut from its stored lengths times the margins (capped at
        batch_tokens but never below the stored length, so a pair too long stays refused)."""
        def planned(column: str, margin: float) -> list[int]:
            lengths = pc.list_value_length(train.data.column(column)).to_pylist()
            if margin == 1.0:
                return lengths
            return [max(n, min(math.ceil(n * margin), self.batch_tokens)) for n in lengths]

        src, tgt = planned("src_ids", self.margins[0]), planned("tgt_ids", self.margins[1])
        return TokenBatches(src, tgt, self.batch_tokens, self.seed)

    def collate(self, rows: dict[str, list], epoch: int, position: int, rank: int = 0) -> Batch:
        """Pad `rows` (a dict of the `columns`) into a Batch; when sampling, the draw is seeded by
        the batch's place in training, and each side stays within batch_tokens."""
        if not self.alpha:
            return collate(rows["src_ids"], rows["tgt_ids"])
        room = self.batch_tokens // len(rows["src_ids"])  # ids a row, padding included
        seeds = [batch_seed(self.seed, epoch, position, rank, side) for side in (0, 1)]
        src = _fitted(self.tokenizer.sample_src(rows["src"], self.alpha, seeds[0]),
                      rows["src_ids"], min(room, self.max_len + 1))  # + EOS
        tgt = rows["tgt_ids"]
        if self.sample_tgt:
            tgt = _fitted(self.tokenizer.sample_tgt(rows["tgt"], self.alpha, seeds[1]),
                          tgt, min(room, self.max_len + 2))  # + BOS, EOS
        return collate(src, tgt)

    def measure(self, train: datasets.Dataset) -> tuple[tuple[float, float], tuple[float, float]]:
        """(mean, MARGIN_QUANTILE quantile) of sampled / stored lengths, per side, on at most
        MARGIN_PAIRS evenly spread training pairs (the same pairs and draws every time)."""
        picked = np.linspace(0, len(train) - 1, min(MARGIN_PAIRS, len(train)), dtype=int)
        rows = train[np.unique(picked).tolist()]  # a dict of lists
        seeds = [batch_seed(self.seed, -1, 0, 0, side) for side in (0, 1)]  # epoch -1: no batch's
        src = _ratios(self.tokenizer.sample_src(rows["src"], self.alpha, seeds[0]), rows["src_ids"])
        tgt = np.ones(1)
        if self.sample_tgt:
            tgt = _ratios(self.tokenizer.sample_tgt(rows["tgt"], self.alpha, seeds[1]),
                          rows["tgt_ids"])
        quantile = [max(1.0, float(np.quantile(r, MARGIN_QUANTILE))) for r in (src, tgt)]
        return (float(src.mean()), float(tgt.mean())), (quantile[0], quantile[1])


def batch_seed(*place: int) -> int:
    """A SentencePiece seed in [0, 2**32 - 1) from a batch's place: (seed, epoch, position, rank,
    side). 2**32 - 1 is left out: SentencePiece reads it as "seed from the clock"."""
    digest = hashlib.blake2b(repr(place).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (2**32 - 1)


def _fitted(sampled: list[list[int]], stored: list[list[int]], limit: int) -> list[list[int]]:
    """Each sampled row, or its stored row where the sampled one is longer than limit."""
    return [new if len(new) <= limit else old for new, old in zip(sampled, stored)]


def _ratios(sampled: list[list[int]], stored: list[list[int]]) -> np.ndarray:
    return np.array([len(new) / len(old) for new, old in zip(sampled, stored)])
