"""Embedding tables, nearest neighbours and lexicon induction against hand-built vectors."""

from __future__ import annotations

import torch

from mha.configs.schema import ModelConfig
from mha.inference.embeddings import lexicon_precision, neighbours, tables
from mha.model.transformer import Transformer


def test_tied_models_have_one_table_and_untied_ones_three():
    tied = Transformer(ModelConfig(d_model=16, heads=2, encoder_layers=1, decoder_layers=1,
                                   d_ff=32), 50, 50)
    untied = Transformer(ModelConfig(d_model=16, heads=2, encoder_layers=1, decoder_layers=1,
                                     d_ff=32, tie_embeddings=False), 50, 60)
    assert list(tables(tied)) == ["tied"]
    assert {name: t.shape for name, t in tables(untied).items()} == {
        "source": (50, 16), "target": (60, 16), "output": (60, 16)}


def test_neighbours_are_ranked_by_cosine_and_skip_specials():
    table = torch.tensor([[9.0, 0], [9, 0], [9, 0], [9, 0],  # PAD UNK BOS EOS: never returned
                          [1, 0], [10, 1], [0, 1], [-1, 0], [1, 1]])
    pieces = ["<pad>", "<unk>", "<s>", "</s>", "a", "b", "c", "d", "e"]
    found = neighbours(table, table[4], pieces, k=3, exclude={4})
    assert [piece for piece, _ in found] == ["b", "e", "c"]
    assert abs(found[1][1] - 2 ** -0.5) < 1e-6


def test_lexicon_precision_counts_the_answer_among_the_k_nearest():
    candidates = torch.eye(6)  # (C, D): six orthogonal target words
    sources = torch.eye(6)[[0, 1, 2, 3]] + 0.1 * torch.eye(6)[[1, 0, 3, 2]]
    # pairs 0 and 1 answer their own row (nearest); pairs 2 and 3 answer their neighbour (2nd)
    got = lexicon_precision(sources, candidates, [0, 1, 3, 2], ks=(1, 2, 5))
    assert got == {1: 0.5, 2: 1.0, 5: 1.0}
