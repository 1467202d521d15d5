"""Head roles (Voita et al. 2019) on hand-built attention patterns: each pattern gets its role's
name, a uniform head none and entropy log(n), the threshold is inclusive, padded batches score as
their rows alone, and the vocabulary facts (training counts, punctuation) match a plain count."""

import math
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mha.data.batching import collate
from mha.inference.roles import (
    ROLES,
    THRESHOLD,
    Vocabulary,
    head_roles,
    punctuation_ids,
    tally,
)

PUNCT, EOS = 5, 3
# ids 9 and 10 tie as the rarest (count 1): the first in the sentence is the rarest
COUNTS = torch.tensor([0, 0, 0, 100, 50, 40, 30, 20, 10, 1, 1, 5])
VOCABULARY = Vocabulary(COUNTS, torch.tensor([i in (EOS, PUNCT) for i in range(12)]))
SRC = [7, 10, 8, 9, PUNCT, EOS]  # S = 6; rarest at 1, punctuation at 4, EOS at 5
TGT = [2, 4, 6, 7, 8, 3]  # BOS ... EOS: tgt_in and tgt_out have T = 5


def batch(sources: list[list[int]], targets: list[list[int]]):
    padded = collate(sources, targets)
    return padded.src_ids, padded.tgt_in, padded.tgt_out


def pointing(*rows: list[int], keys: int) -> torch.Tensor:
    """One one-hot row per query at the given key, for each head: (1, H, Q, K)."""
    return torch.stack([F.one_hot(torch.tensor(row), keys).double() for row in rows])[None]


def uniform(queries: int, keys: int, causal: bool = False) -> torch.Tensor:
    """(1, 1, Q, K) rows spread evenly over the keys each query sees."""
    seen = torch.ones(queries, keys).tril() if causal else torch.ones(queries, keys)
    return (seen / seen.sum(-1, keepdim=True))[None, None].double()


def roles_of(kind: str, weights: torch.Tensor, sources=(SRC,), targets=(TGT,)) -> list[dict]:
    return head_roles(kind, weights, *batch(list(sources), list(targets)), VOCABULARY)


def test_encoder_heads_get_their_roles():
    heads = pointing([0, 0, 1, 2, 3, 4], [1, 2, 3, 4, 5, 5], [0, 1, 2, 3, 4, 5],
                     [4, 5, 4, 5, 4, 5], [1] * 6, keys=6)
    records = roles_of("encoder", torch.cat([heads, uniform(6, 6)], 1))
    assert [r["role"] for r in records] == ["previous", "next", "itself", "eos_punct", "rarest",
                                            None]
    for record, role in zip(records, ROLES["encoder"]):
        assert record["roles"][role] == 1.0 and record["entropy"] == 0.0
    flat = records[-1]
    assert flat["entropy"] == pytest.approx(math.log(6))
    assert flat["roles"] == pytest.approx({"previous": 1 / 6, "next": 1 / 6, "itself": 1 / 6,
                                           "eos_punct": 2 / 6, "rarest": 1 / 6})


def test_decoder_heads_get_their_roles():
    heads = pointing([0, 0, 1, 2, 3], [0, 1, 2, 3, 4], [0] * 5, keys=5)
    records = roles_of("decoder", torch.cat([heads, uniform(5, 5, causal=True)], 1))
    assert [r["role"] for r in records] == ["previous", "itself", "bos", None]
    assert [r["roles"][role] for r, role in zip(records, ROLES["decoder"])] == [1.0] * 3
    # BOS's query sees only itself and counts for nothing; the others see q + 1 keys
    assert records[-1]["roles"]["bos"] == pytest.approx(sum(1 / (q + 1) for q in (1, 2, 3, 4)) / 4)
    assert records[-1]["entropy"] == pytest.approx(sum(math.log(q + 1) for q in range(5)) / 5)


def test_cross_heads_get_their_roles():
    S, T = len(SRC), len(TGT) - 1
    diagonal = [int(t * S / T + 0.5) for t in range(T)]  # round(t S / T), halves up
    assert diagonal == [0, 1, 2, 4, 5]
    heads = pointing(diagonal, [5] * T, [1] * T, keys=S)
    records = roles_of("cross", torch.cat([heads, uniform(T, S)], 1))
    assert [r["role"] for r in records] == ["diagonal", "eos", "rarest", None]
    assert [r["roles"][role] for r, role in zip(records, ROLES["cross"])] == [1.0] * 3
    assert records[-1]["entropy"] == pytest.approx(math.log(S))
    assert records[-1]["roles"] == pytest.approx({"diagonal": 1 / 6, "eos": 1 / 6,
                                                  "rarest": 1 / 6})


def test_the_threshold_is_a_share_of_queries_reached_or_not():
    source = [11] * 10 + [EOS]  # S = 11: ten queries have a previous token
    nine = [0, *range(9), 10]  # queries 1..9 look back, the last looks at itself
    eight = [0, *range(8), 9, 10]
    records = roles_of("encoder", pointing(nine, eight, keys=11), sources=[source])
    assert records[0]["roles"]["previous"] == THRESHOLD == 0.9
    assert [r["role"] for r in records] == ["previous", None]


@pytest.mark.parametrize("kind", ["encoder", "decoder", "cross"])
def test_padding_leaves_the_shares_as_the_rows_alone(kind: str):
    torch.manual_seed(0)
    sources = [SRC, [8, 9, EOS], [7, 11, 10, 4, PUNCT, 6, 9, EOS]]
    targets = [TGT, [2, 4, 3], [2, 6, 7, 3]]
    src_ids, tgt_in, tgt_out = batch(sources, targets)
    queries = src_ids.ne(0) if kind == "encoder" else tgt_out.ne(0)  # (B, Q) real
    keys = tgt_out.ne(0) if kind == "decoder" else src_ids.ne(0)  # (B, K) real
    B, Q, K = len(sources), queries.shape[1], keys.shape[1]
    logits = torch.randn(B, 2, Q, K, dtype=torch.float64)
    blocked = ~keys[:, None, None, :]  # (B, 1, 1, K)
    if kind == "decoder":
        blocked = blocked | torch.ones(Q, K, dtype=torch.bool).triu(1)
    weights = logits.masked_fill(blocked, -math.inf).softmax(-1)  # (B, H, Q, K)
    garbage = logits.softmax(-1)  # padding queries' rows, on padding keys too
    weights = torch.where(queries[:, None, :, None], weights, garbage)
    whole = tally(kind, weights, src_ids, tgt_in, tgt_out, VOCABULARY)
    alone = []
    for b, (source, target) in enumerate(zip(sources, targets)):
        q = len(source) if kind == "encoder" else len(target) - 1
        k = q if kind == "decoder" else len(source)
        alone.append(tally(kind, weights[b:b + 1, :, :q, :k], *batch([source], [target]),
                           VOCABULARY))
    rows = alone[0] + alone[1] + alone[2]
    assert whole.rows == rows.rows == int(queries.sum())
    assert torch.equal(whole.eligible, rows.eligible) and whole.eligible.min() > 0
    assert torch.allclose(whole.credit, rows.credit)
    assert torch.allclose(whole.entropy, rows.entropy)


def test_punctuation_is_pieces_made_only_of_punctuation():
    pieces = ["<pad>", "<unk>", "<s>", "</s>", "▁a", "▁.", "▁", ",", "a.", "“.", "▁„", "-", "5"]
    assert punctuation_ids(pieces).tolist() == [
        False, False, False, True, False, True, False, True, False, True, True, True, False]


def test_the_vocabulary_counts_the_training_sources(tiny_run: Path):
    from mha.data.prepare import load_prepared
    from mha.data.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(tiny_run / "tokenizer")
    vocabulary = Vocabulary.of_run(tiny_run, tokenizer)
    counted = Counter(i for ids in load_prepared(tiny_run).splits["train"]["src_ids"] for i in ids)
    assert vocabulary.counts.tolist() == [counted[i] for i in range(tokenizer.src_vocab_size)]
    assert vocabulary.punctuation.tolist() == punctuation_ids(tokenizer.src_vocab()).tolist()
    assert vocabulary.punctuation[Tokenizer.EOS + 1:].any()  # the corpus has full stops
