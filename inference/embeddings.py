"""What the embeddings hold: nearest neighbours by cosine, and bilingual lexicon induction.

A model has up to three tables: source embeddings, target embeddings and the output projection
(one table when embeddings are tied, as in the presets' joint vocabulary). A word is the mean of
its pieces' rows (SentencePiece splits it as it would inside a sentence). Lexicon induction asks,
for each (source word, target word) pair: is the target word the nearest, or among the 5 nearest,
of the candidate target words to the source word's vector? Precision at 1 and at 5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mha.data.tokenizer import Tokenizer
from mha.model.transformer import Transformer


def tables(model: Transformer) -> dict[str, Tensor]:
    """The model's distinct embedding tables by name, each (V, D): one when they are all tied."""
    found = {"source": model.src_embed.weight, "target": model.tgt_embed.weight,
             "output": model.output.weight}
    unique: dict[str, Tensor] = {}
    for name, weight in found.items():
        if not any(weight is kept for kept in unique.values()):
            unique[name] = weight
    if len(unique) == 1:
        return {"tied": found["source"].detach().float()}
    return {name: weight.detach().float() for name, weight in unique.items()}


def word_vector(table: Tensor, tokenizer: Tokenizer, word: str, side: str) -> Tensor:
    """The mean of the word's pieces' rows (D,); its pieces as the tokenizer splits it."""
    ids = (tokenizer.encode_src([word])[0][:-1] if side == "source"  # without EOS
           else tokenizer.encode_tgt([word])[0][1:-1])  # without BOS and EOS
    return table[ids].mean(0)


def neighbours(table: Tensor, vector: Tensor, pieces: list[str], k: int = 10,
               exclude: set[int] = frozenset()) -> list[tuple[str, float]]:
    """The k rows of `table` (V, D) nearest to `vector` (D,) by cosine, as (piece, similarity);
    special pieces (PAD, UNK, BOS, EOS) and `exclude` left out."""
    similarity = F.cosine_similarity(table, vector[None], dim=-1)  # (V,)
    skip = {Tokenizer.PAD, Tokenizer.UNK, Tokenizer.BOS, Tokenizer.EOS, *exclude}
    similarity[list(skip)] = -2.0
    values, ids = similarity.topk(min(k, len(pieces) - len(skip)))
    return [(pieces[i], float(v)) for v, i in zip(values, ids.tolist())]


def lexicon_precision(sources: Tensor, candidates: Tensor, answers: list[int],
                      ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """sources (N, D): one vector a pair; candidates (C, D); answers[n]: the row of candidates
    that pair n's target word is. Precision at each k: the share of pairs whose answer is among
    the k candidates nearest by cosine."""
    similarity = F.normalize(sources, dim=-1) @ F.normalize(candidates, dim=-1).T  # (N, C)
    ranked = similarity.topk(max(ks), dim=-1).indices  # (N, max k)
    hits = ranked == torch.tensor(answers)[:, None]  # (N, max k)
    return {k: float(hits[:, :k].any(-1).float().mean()) for k in ks}
