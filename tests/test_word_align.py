"""Word links from attention: pieces merge into words (source summed, target averaged), one
link per target word to its argmax source word, EOS left out, the usual row or Shift-Att's."""

import torch

from mha.inference.word_align import links, merge_words, pharaoh, piece_rows, word_ids

SRC = ["▁Ein", "▁Mann", "▁fähr", "t", "▁Rad", "."]  # words: Ein, Mann, fährt, Rad.
TGT = ["▁A", "▁man", "▁rid", "es", "."]  # words: A, man, rides.
# rows: BOS, A, man, rid, es, . (row t reads piece t and predicts piece t + 1);
# columns: Ein, Mann, fähr, t, Rad, ., EOS
CROSS = torch.tensor([
    [0.30, 0.05, 0.05, 0.05, 0.05, 0.00, 0.50],  # predicts A: EOS weighs most, but is no word
    [0.05, 0.35, 0.00, 0.00, 0.25, 0.25, 0.10],  # predicts man: Rad. (0.5) beats Mann (0.35)
    [0.10, 0.10, 0.30, 0.30, 0.10, 0.00, 0.10],  # predicts rid
    [0.10, 0.50, 0.10, 0.10, 0.10, 0.00, 0.10],  # predicts es
    [0.10, 0.40, 0.20, 0.10, 0.10, 0.00, 0.10],  # predicts .
    [0.10, 0.10, 0.10, 0.10, 0.50, 0.00, 0.10],  # reads . (predicts EOS)
])


def test_pieces_group_into_whitespace_words():
    assert word_ids(SRC) == [0, 1, 2, 2, 3, 3]
    assert word_ids(["▁", ",", "▁ja"]) == [0, 0, 1]  # a lone "▁" starts a word
    assert word_ids(["x", "▁y"]) == [0, 1]  # pieces before any "▁" are word 0
    assert word_ids([]) == []


def test_the_hand_built_matrix_gives_the_links_worked_out_by_hand():
    # A: row BOS -> Ein 0.30 (EOS 0.50 left out): 0-0
    # man: row A -> word sums 0.05, 0.35, 0.00, 0.50: Rad. (3-1), though Mann is the top piece
    # rides.: mean of rows man, rid, es: sums (0.1, 0.1, 0.6, 0.1), (0.1, 0.5, 0.2, 0.1),
    #   (0.1, 0.4, 0.3, 0.1) -> (0.1, 0.333, 0.367, 0.1): fährt (2-2); the last or the top row
    #   alone would pick Mann
    found = links(CROSS[None], SRC, TGT)
    assert found == [(0, 0), (3, 1), (2, 2)]
    assert pharaoh(found) == "0-0 3-1 2-2"


def test_shift_att_reads_the_row_where_the_word_is_the_input():
    # A: row A (Rad. 0.5): 3-0; man: row man (fährt 0.6): 2-1; rides.: mean of rows rid, es, .
    #   (0.1, 0.5, 0.2, 0.1), (0.1, 0.4, 0.3, 0.1), (0.1, 0.1, 0.2, 0.5) -> Mann: 1-2
    assert links(CROSS[None], SRC, TGT, shift=True) == [(3, 0), (2, 1), (1, 2)]
    shifted = torch.cat([CROSS[1:], torch.zeros(1, 7)])  # row t + 1 moved to row t
    assert links(CROSS[None], SRC, TGT, shift=True) == links(shifted[None], SRC, TGT)
    assert torch.equal(piece_rows(CROSS, shift=True), CROSS[1:, :-1])
    assert torch.equal(piece_rows(CROSS), CROSS[:-1, :-1])


def test_a_head_alone_or_the_heads_averaged():
    src, tgt = ["▁a", "▁b", "▁c"], ["▁x"]
    heads = torch.tensor([[[0.60, 0.40, 0.00, 0.0], [0.0, 0.0, 0.0, 1.0]],
                          [[0.00, 0.45, 0.55, 0.0], [0.0, 0.0, 0.0, 1.0]]])  # (H, T + 1, S + 1)
    assert links(heads, src, tgt, head=0) == [(0, 0)]
    assert links(heads, src, tgt, head=1) == [(2, 0)]
    assert links(heads, src, tgt) == [(1, 0)]  # mean (0.30, 0.425, 0.275)


def test_merge_words_sums_source_pieces_and_averages_target_pieces():
    weights = torch.rand(2, len(TGT), len(SRC))  # (H, T, S)
    merged = merge_words(weights, SRC, TGT)  # (H, Tw, Sw)
    by_hand = torch.stack([
        torch.stack([weights[:, rows][:, :, cols].sum(-1).mean(-1)
                     for cols in ([0], [1], [2, 3], [4, 5])], -1)
        for rows in ([0], [1], [2, 3, 4])], -2)
    assert torch.allclose(merged, by_hand)


def test_no_words_no_links():
    assert links(CROSS[None], [], TGT) == [] and links(CROSS[None], SRC, []) == []
    assert pharaoh([]) == ""
