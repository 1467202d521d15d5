"""Word alignments from encoder-decoder attention, written as Pharaoh links `i-j`.

A word is a whitespace-separated token of a line; SentencePiece marks the first piece of each
with "▁", so the pieces group into words without the text. Legend: T target pieces, S source
pieces, Tw target words, Sw source words.

- Which attention row belongs to a target piece: a teacher-forced pass over BOS + y_1..y_n gives
  n + 1 rows; row t reads y_t (y_0 = BOS) and predicts y_t+1. The usual reading (`shift=False`,
  as OpenNMT-py and fairseq do) aligns y_k with the row that predicts it, row k-1; Shift-Att
  (Chen et al. 2020, "Accurate Word Alignment Induction from Neural Machine Translation") with
  the row that reads it, row k. The source's EOS column is left out (BOS and EOS are no words).
- Pieces to words: a source word takes the sum of its pieces' weights (the attention mass on the
  word); a target word the mean of its pieces' rows.
- Links: each target word j is linked to the source word i it weighs most (argmax; a tie goes to
  the first), one link per target word. Heads: any one head, or a layer's heads averaged.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mha.data.tokenizer import WORD_START

Link = tuple[int, int]  # (source word i, target word j), 0-based


def word_ids(pieces: list[str]) -> list[int]:
    """The word each piece belongs to: a piece starting with "▁" starts a new word (pieces
    before the first such piece belong to word 0)."""
    ids, word = [], -1
    for piece in pieces:
        if piece.startswith(WORD_START) or word < 0:
            word += 1
        ids.append(word)
    return ids


def grouping(pieces: list[str]) -> Tensor:
    """(words, pieces) 0/1 matrix: row w marks the pieces of word w."""
    ids = torch.tensor(word_ids(pieces), dtype=torch.long)
    words = int(ids.max()) + 1 if len(pieces) else 0
    return (torch.arange(words)[:, None] == ids[None]).float()  # (words, pieces)


def piece_rows(cross: Tensor, shift: bool = False) -> Tensor:
    """cross (..., T + 1, S + 1), a pass over BOS + T target pieces with a source of S pieces
    + EOS -> (..., T, S): one row per target piece (its predicting row, or with `shift` its
    reading row), the EOS column left out."""
    rows = cross[..., 1:, :] if shift else cross[..., :-1, :]  # (..., T, S + 1)
    return rows[..., :-1]  # (..., T, S)


def merge_words(weights: Tensor, src_pieces: list[str], tgt_pieces: list[str]) -> Tensor:
    """weights (..., T, S) over pieces -> (..., Tw, Sw) over words: summed over a source word's
    pieces, averaged over a target word's pieces."""
    src = grouping(src_pieces).to(weights)  # (Sw, S)
    tgt = grouping(tgt_pieces).to(weights)  # (Tw, T)
    tgt = tgt / tgt.sum(-1, keepdim=True).clamp(min=1)  # rows average their pieces
    return tgt @ weights @ src.T  # (..., Tw, Sw)


def best_source(cross: Tensor, src_pieces: list[str], tgt_pieces: list[str],
                shift: bool = False) -> Tensor:
    """cross (..., T + 1, S + 1) -> (..., Tw): for each target word, the source word it is
    linked to (see the module docstring). `src_pieces` without EOS, `tgt_pieces` without BOS and
    EOS."""
    words = merge_words(piece_rows(cross, shift).float(), src_pieces, tgt_pieces)  # (..., Tw, Sw)
    return words.argmax(-1)  # (..., Tw)


def links(cross: Tensor, src_pieces: list[str], tgt_pieces: list[str], *,
          shift: bool = False, head: int | None = None) -> list[Link]:
    """One layer's encoder-decoder attention (H, T + 1, S + 1) -> Pharaoh links, one per target
    word, in target order: `head` alone, or (None) the heads averaged. No links when either side
    has no words."""
    if not src_pieces or not tgt_pieces:
        return []
    weights = cross.float().mean(0) if head is None else cross[head].float()  # (T + 1, S + 1)
    return [(int(i), j) for j, i in enumerate(best_source(weights, src_pieces, tgt_pieces, shift))]


def pharaoh(found: list[Link]) -> str:
    """Links as one Pharaoh line: `i-j` pairs separated by spaces."""
    return " ".join(f"{i}-{j}" for i, j in found)
