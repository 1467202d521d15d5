"""Token batches: bounded, bucketed (little padding), deterministic, disjoint across ranks."""

import gzip

import pytest

from mha.configs.schema import ConfigError
from mha.data.batching import TokenBatches, collate


def multi30k_lengths(folder):
    """Whitespace-token lengths of the Multi30k training pairs (+1 EOS, +2 BOS/EOS)."""
    sides = []
    for lang, extra in (("de", 1), ("en", 2)):
        with gzip.open(folder / f"train.{lang}.gz", "rt", encoding="utf-8") as file:
            sides.append([len(line.split()) + extra for line in file])
    return sides


def test_batches_respect_the_bound_cover_every_pair_and_pad_little(multi30k_dir):
    src, tgt = multi30k_lengths(multi30k_dir)
    batches = TokenBatches(src, tgt, batch_tokens=2048, seed=1).epoch(0)
    assert sorted(i for batch in batches for i in batch) == list(range(len(src)))
    padded = real = 0
    for batch in batches:
        longest = max(max(src[i], tgt[i]) for i in batch)
        assert len(batch) * longest <= 2048
        padded += len(batch) * (max(src[i] for i in batch) + max(tgt[i] for i in batch))
        real += sum(src[i] + tgt[i] for i in batch)
    assert 1 - real / padded < 0.10


def test_order_is_fixed_by_seed_and_epoch():
    src = [3 + i % 17 for i in range(500)]
    tgt = [4 + i % 13 for i in range(500)]
    one = TokenBatches(src, tgt, 200, seed=7)
    assert one.epoch(0) == TokenBatches(src, tgt, 200, seed=7).epoch(0)
    assert one.epoch(0) != one.epoch(1)
    assert one.epoch(0) != TokenBatches(src, tgt, 200, seed=8).epoch(0)


def test_ranks_take_disjoint_batches_and_resume_mid_epoch():
    src = [3 + i % 17 for i in range(500)]
    tgt = [4 + i % 13 for i in range(500)]
    batches = TokenBatches(src, tgt, 200, seed=7)
    n = len(batches.epoch(0))
    take = lambda stream, k: [next(stream) for _ in range(k)]
    alone = [b for _, _, b in take(batches.stream(0, 0), n)]
    rank0 = [b for _, _, b in take(batches.stream(0, 0, rank=0, world_size=2), n // 2)]
    rank1 = [b for _, _, b in take(batches.stream(0, 0, rank=1, world_size=2), n // 2)]
    assert [x for pair in zip(rank0, rank1) for x in pair] == alone[: 2 * (n // 2)]
    epoch, position, _ = take(batches.stream(0, 0), 5)[-1]
    resumed = next(batches.stream(epoch, position))[2]
    assert resumed == alone[5]


def test_collate_pads_and_shifts_the_target():
    batch = collate([[5, 6, 3], [7, 3]], [[2, 8, 9, 3], [2, 8, 3]])
    assert batch.src_ids.tolist() == [[5, 6, 3], [7, 3, 0]]
    assert batch.tgt_in.tolist() == [[2, 8, 9], [2, 8, 3]]
    assert batch.tgt_out.tolist() == [[8, 9, 3], [8, 3, 0]]
    assert (batch.src_tokens, batch.tgt_tokens) == (5, 5)


def test_a_batch_bound_below_the_longest_pair_is_a_config_error():
    with pytest.raises(ConfigError, match=r"train.batch_tokens \(10\) is smaller than the longest"):
        TokenBatches([3, 12], [4, 5], batch_tokens=10, seed=1)
