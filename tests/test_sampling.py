"""Subword sampling on the training side: seeded by the batch's place, within the token bound,
lossless, exactly resumable, and off by default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import tiny

from mha.configs.schema import load_config, presets
from mha.data.batching import TokenBatches, collate
from mha.data.prepare import prepare
from mha.data.sampling import SubwordSampler
from mha.training.loop import train


@pytest.fixture(scope="module")
def run_dir(small_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder whose data (300 pairs, vocabulary 200) is prepared once for this module."""
    folder = tmp_path_factory.mktemp("prepared")
    prepare(tiny(folder, small_corpus))
    return folder


def sampler_for(run_dir: Path, small_corpus: Path, *overrides: str) -> tuple:
    """A sampler as training builds it, and the training split with the columns it reads."""
    cfg = tiny(run_dir, small_corpus, *overrides)
    prepared = prepare(cfg)  # reuses the module's data
    sampler = SubwordSampler.from_config(cfg, prepared)
    return sampler, prepared.splits["train"].select_columns(sampler.columns)


def id_lists(batch) -> tuple[list, list]:
    return batch.src_ids.tolist(), batch.tgt_out.tolist()


def test_the_same_place_draws_the_same_ids_another_place_others(run_dir, small_corpus):
    sampler, rows = sampler_for(run_dir, small_corpus, "train.subword_sampling=0.1")
    batch = rows[list(range(12))]
    first = id_lists(sampler.collate(batch, epoch=2, position=7, rank=0))
    others = [id_lists(sampler.collate(batch, *place)) for place in
              ((2, 8, 0), (3, 7, 0), (2, 7, 1))]  # position, epoch, rank
    assert id_lists(sampler.collate(batch, epoch=2, position=7, rank=0)) == first
    assert all(other != first for other in others)
    longest = max(range(50), key=lambda i: len(rows[i]["src"]))
    one = rows[[longest]]  # one row: SentencePiece encodes on the calling thread
    draws = [id_lists(sampler.collate(one, 0, position)) for position in (1, 2, 1)]
    assert draws[0] == draws[2] != draws[1]


def unpadded(ids: torch.Tensor, first: list[int]) -> list[list[int]]:
    return [first + [token for token in row if token != 0] for row in ids.tolist()]


def test_sampled_ids_decode_to_the_text_and_differ_from_the_stored_ones(run_dir, small_corpus):
    sampler, rows = sampler_for(run_dir, small_corpus, "train.subword_sampling=0.1",
                                "train.batch_tokens=100000")  # room for every draw
    batch = rows[list(range(100))]
    sampled = sampler.collate(batch, epoch=0, position=1)
    for ids, texts, stored in ((unpadded(sampled.src_ids, []), batch["src"], batch["src_ids"]),
                               (unpadded(sampled.tgt_out, [2]), batch["tgt"], batch["tgt_ids"])):
        assert [sampler.tokenizer.decode_tgt(row) for row in ids] == texts  # joint vocabulary
        assert sum(len(new) > len(old) for new, old in zip(ids, stored)) > 80


@pytest.mark.parametrize("overrides", [
    ["train.subword_sampling=0.1"],
    ["train.subword_sampling=0.5", "train.batch_tokens=150"],
    ["train.subword_sampling=0.3", "data.spm_model_type=unigram"],
    ["train.subword_sampling=0.2", "train.subword_sampling_tgt=false"],
])
def test_every_sampled_batch_stays_within_batch_tokens_on_both_sides(
        overrides, small_corpus, tmp_path):
    cfg = tiny(tmp_path, small_corpus, *overrides)
    sampler, rows = sampler_for(tmp_path, small_corpus, *overrides)
    batches = sampler.token_batches(rows)
    bound, resampled, total = cfg.train.batch_tokens, 0, 0
    for epoch in (0, 1):
        for position, indices in enumerate(batches.epoch(epoch), start=1):
            batch = rows[indices]
            sampled = sampler.collate(batch, epoch, position)
            assert sampled.src_ids.numel() <= bound
            assert len(indices) * (sampled.tgt_out.shape[1] + 1) <= bound  # + BOS
            assert sampled.src_ids.shape[1] <= cfg.data.max_len + 1
            stored = collate(batch["src_ids"], batch["tgt_ids"]).src_ids.tolist()
            resampled += sum(a != b for a, b in zip(sampled.src_ids.tolist(), stored))
            total += len(indices)
    assert resampled > 0.6 * total  # the bound is not kept by giving up on sampling


def test_a_resumed_run_with_sampling_equals_an_uninterrupted_one(tmp_path, small_corpus):
    on = ["train.subword_sampling=0.1", "train.accumulate=2"]
    straight = train(tiny(tmp_path / "a", small_corpus, "train.max_steps=10", *on))
    train(tiny(tmp_path / "b", small_corpus, "train.max_steps=5", *on))
    resumed = train(tiny(tmp_path / "b", small_corpus, "train.max_steps=10", *on), resume=True)
    expected, got = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(got) == list(range(1, 11))
    for step in expected:
        assert abs(expected[step] - got[step]) < 1e-6, step
    for (name, a), b in zip(straight.model.state_dict().items(),
                            resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
    assert resumed.progress.tgt_tokens == straight.progress.tgt_tokens
    sampler, rows = sampler_for(tmp_path / "a", small_corpus, *on)  # what step 1 trained on
    first_two = sampler.token_batches(rows).epoch(0)[:2]
    src_tokens = sum(sampler.collate(rows[indices], 0, position).src_tokens
                     for position, indices in enumerate(first_two, start=1))
    assert metrics(tmp_path / "a")[0]["src_tokens"] == src_tokens
    assert src_tokens > sum(len(ids) for indices in first_two for ids in rows[indices]["src_ids"])


def metrics(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if "loss" in record]


def losses(run: Path) -> dict[int, float]:
    return {record["step"]: record["loss"] for record in metrics(run)}


def test_off_by_default_changes_nothing(run_dir, small_corpus):
    assert all(load_config(name).train.subword_sampling == 0.0 for name in presets())
    sampler, rows = sampler_for(run_dir, small_corpus)
    assert sampler.columns == ["src_ids", "tgt_ids"] and sampler.margins == (1.0, 1.0)
    plain = TokenBatches([len(ids) for ids in rows["src_ids"]],
                         [len(ids) for ids in rows["tgt_ids"]], 400, seed=1)
    assert sampler.token_batches(rows).epoch(3) == plain.epoch(3)
    batch = rows[plain.epoch(0)[0]]
    assert id_lists(sampler.collate(batch, 0, 1)) == id_lists(
        collate(batch["src_ids"], batch["tgt_ids"]))

