"""What each head looks at: roles after Voita et al. (2019), "Analyzing Multi-Head Self-Attention:
Specialized Heads Do the Heavy Lifting" (`mha heads`).

For every head, over the real (non-padding) queries of a split, teacher-forced: the share of
queries whose strongest weight falls on each candidate role's key, and the mean entropy (nats)
of the weight rows. The candidates, by kind (positions count from 0; sources end in EOS,
targets start with BOS):

- encoder self-attention: `previous` (key i-1), `next` (key i+1), `itself` (key i), `eos_punct`
  (EOS, or a piece made only of punctuation characters), `rarest` (the sentence's subword that
  is rarest in the run's training sources);
- decoder self-attention, causal so no "next": `previous`, `itself`, `bos` (the first key);
- encoder-decoder attention: `diagonal` (source position round(t * S / T), halves up, for target
  query t of T real target queries (BOS + words) over S real source tokens (EOS included): the
  explore page's diagonal share), `eos` (the source EOS, a "no-op" sink), `rarest` (as above).

A query counts toward a role only when the role's key exists for it (the first query has no
previous token) and it sees at least two keys (the decoder's BOS query sees only itself, so
it says nothing). Where several keys tie for the strongest weight, each gets an equal part of
the query, so a uniform head scores 1/n everywhere rather than winning its first key.

Legend: B batch, H heads, Q queries, K keys, S source length, T target length, V source vocab.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from mha.data.tokenizer import Tokenizer
from mha.model.attention import AttentionRecorder
from mha.model.transformer import Transformer

THRESHOLD = 0.9
"""A head gets a role's name when that share of its queries puts the strongest weight on the
role's key. Voita et al. name a head positional at 90%; one bar for every role keeps the names
comparable, and at 90% a name means the head does that almost always, not merely most often."""

ROLES = {"encoder": ("previous", "next", "itself", "eos_punct", "rarest"),
         "decoder": ("previous", "itself", "bos"),
         "cross": ("diagonal", "eos", "rarest")}
RECORDED = {"encoder": "encoder.{}.self_attn", "decoder": "decoder.{}.self_attn",
            "cross": "decoder.{}.cross_attn"}  # AttentionRecorder's names
WORD_START = "\u2581"  # SentencePiece's mark before a piece that starts a word


@dataclass
class Vocabulary:
    """What the roles need of the source vocabulary: counts (V,) of each id in the training
    sources, and punctuation (V,) True for EOS and for pieces made only of punctuation."""

    counts: Tensor
    punctuation: Tensor

    @classmethod
    def of_run(cls, run_dir: Path, tokenizer: Tokenizer) -> Vocabulary:
        """Counted over the run's prepared training split (its source ids, EOS included)."""
        import pyarrow.compute

        from mha.data.prepare import load_prepared  # datasets is slow to import

        column = load_prepared(run_dir).splits["train"].with_format("arrow")["src_ids"]
        ids = torch.tensor(pyarrow.compute.list_flatten(column).to_numpy(), dtype=torch.long)
        counts = torch.bincount(ids, minlength=tokenizer.src_vocab_size)
        return cls(counts, punctuation_ids(tokenizer.src_vocab()))


def punctuation_ids(pieces: list[str]) -> Tensor:
    """(V,) bool: True for EOS and for pieces made only of Unicode punctuation (categories P*),
    SentencePiece's word-start mark aside ("▁." and "," are punctuation, "▁" alone is not)."""
    def only_punctuation(piece: str) -> bool:
        text = piece.replace(WORD_START, "")
        return bool(text) and all(unicodedata.category(char).startswith("P") for char in text)

    marks = torch.tensor([only_punctuation(piece) for piece in pieces], dtype=torch.bool)
    marks[Tokenizer.EOS] = True
    return marks


def rarest(ids: Tensor, counts: Tensor) -> Tensor:
    """(B, K) ids -> (B, K) bool, True at each row's rarest non-special subword (lowest count;
    ties: the first); a row of specials only has none."""
    specials = ids <= Tokenizer.EOS  # PAD, UNK, BOS, EOS
    score = counts.to(ids.device)[ids].double().masked_fill(specials, float("inf"))
    found = torch.zeros_like(ids, dtype=torch.bool)
    found.scatter_(1, score.argmin(1, keepdim=True), True)  # argmin: the first of equal minima
    return found & ~specials


def role_keys(kind: str, src_ids: Tensor, tgt_in: Tensor, tgt_out: Tensor,
              vocabulary: Vocabulary) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Real queries (B, Q), the keys each query sees (B, Q, K) and, per role, its key(s)
    (B, Q, K), all bool, for one batch: src_ids (B, S), tgt_in and tgt_out (B, T)."""
    real_src, real_tgt = src_ids.ne(Tokenizer.PAD), tgt_out.ne(Tokenizer.PAD)
    queries = real_src if kind == "encoder" else real_tgt  # (B, Q)
    keys, key_ids = (real_tgt, tgt_in) if kind == "decoder" else (real_src, src_ids)  # (B, K)
    q = torch.arange(queries.shape[1], device=src_ids.device)[:, None]  # (Q, 1)
    k = torch.arange(keys.shape[1], device=src_ids.device)[None, :]  # (1, K)
    seen = keys[:, None, :] & queries[:, :, None]  # (B, Q, K)
    if kind == "decoder":
        seen = seen & (k <= q)
    at = {"previous": k == q - 1, "next": k == q + 1, "itself": k == q, "bos": k == 0}
    if kind != "decoder":
        at["eos"] = key_ids.eq(Tokenizer.EOS)[:, None, :]  # (B, 1, K)
        at["eos_punct"] = vocabulary.punctuation.to(key_ids.device)[key_ids][:, None, :]
        at["rarest"] = rarest(key_ids, vocabulary.counts)[:, None, :]
    if kind == "cross":
        S, T = real_src.sum(1, keepdim=True), real_tgt.sum(1, keepdim=True)  # (B, 1) each
        diagonal = torch.div(2 * q.T * S + T, 2 * T.clamp(min=1), rounding_mode="floor")  # (B, Q)
        at["diagonal"] = k[None] == diagonal[:, :, None]  # (B, Q, K)
    return queries, seen, {role: at[role] & seen for role in ROLES[kind]}


@dataclass
class Tally:
    """Sums over queries, to add up over batches: credit (H, R) toward each role, eligible (R,)
    queries per role, entropy (H,) summed over `rows` real query rows."""

    credit: Tensor
    eligible: Tensor
    entropy: Tensor
    rows: int

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.credit + other.credit, self.eligible + other.eligible,
                     self.entropy + other.entropy, self.rows + other.rows)

    def records(self, kind: str) -> list[dict]:
        """Per head: {"roles": {role: share}, "entropy": mean nats, "role": name or None}."""
        shares = (self.credit / self.eligible.clamp(min=1)).tolist()  # (H, R)
        result = []
        for head, row in enumerate(shares):
            roles = dict(zip(ROLES[kind], row))
            best = max(roles, key=roles.get)  # the first of equal shares, in ROLES order
            result.append({"roles": roles, "entropy": self.entropy[head].item() / max(self.rows, 1),
                           "role": best if roles[best] >= THRESHOLD else None})
        return result


def tally(kind: str, weights: Tensor, src_ids: Tensor, tgt_in: Tensor, tgt_out: Tensor,
          vocabulary: Vocabulary) -> Tally:
    """One batch's attention `weights` (B, H, Q, K) of one module of `kind`, scored per role."""
    queries, seen, targets = role_keys(kind, src_ids, tgt_in, tgt_out, vocabulary)
    weights = weights.double() * seen[:, None]  # (B, H, Q, K), zero where a query sees nothing
    strongest = weights.masked_fill(~seen[:, None], -1.0)
    top = strongest == strongest.amax(-1, keepdim=True)  # (B, H, Q, K): the (tied) arg-max keys
    part = top.double() / top.sum(-1, keepdim=True)  # each tied key's part of its query
    chooses = queries & (seen.sum(-1) >= 2)  # (B, Q): queries with a choice to make
    credit, eligible = [], []
    for target in targets.values():
        counted = chooses & target.any(-1)  # (B, Q)
        hits = (part * target[:, None]).sum(-1)  # (B, H, Q)
        credit.append((hits * counted[:, None]).sum((0, 2)))  # (H,)
        eligible.append(counted.sum())
    entropy = -(weights * weights.clamp(min=1e-300).log()).sum(-1)  # (B, H, Q), nats
    return Tally(torch.stack(credit, 1).cpu(), torch.stack(eligible).cpu(),
                 (entropy * queries[:, None]).sum((0, 2)).cpu(), int(queries.sum()))


def head_roles(kind: str, weights: Tensor, src_ids: Tensor, tgt_in: Tensor, tgt_out: Tensor,
               vocabulary: Vocabulary) -> list[dict]:
    """One batch's roles and entropy per head: `Tally.records` of `tally`."""
    return tally(kind, weights, src_ids, tgt_in, tgt_out, vocabulary).records(kind)


@torch.no_grad()
def measure_roles(model: Transformer, batches: list[tuple[Tensor, Tensor, Tensor]],
                  vocabulary: Vocabulary) -> dict[tuple[str, int, int], dict]:
    """Every head's roles and entropy over `batches` (src_ids, tgt_in, tgt_out), one teacher-forced
    pass each, recorded by AttentionRecorder; keyed by (kind, layer, head)."""
    layers = {"encoder": len(model.encoder), "decoder": len(model.decoder),
              "cross": len(model.decoder)}
    totals: dict[tuple[str, int], Tally] = {}
    for src_ids, tgt_in, tgt_out in batches:
        with AttentionRecorder(model) as recorded:
            model(src_ids, tgt_in)
        for kind, count in layers.items():
            for layer in range(count):
                found = tally(kind, recorded[RECORDED[kind].format(layer)], src_ids, tgt_in,
                              tgt_out, vocabulary)
                totals[kind, layer] = totals[kind, layer] + found if (kind, layer) in totals \
                    else found
    return {(kind, layer, head): record for (kind, layer), total in totals.items()
            for head, record in enumerate(total.records(kind))}


def role_cell(record: dict) -> str:
    """A head record's role for a table: "previous 0.97" when named, else "(itself 0.33)", its
    largest share."""
    best = record["role"] or max(record["roles"], key=record["roles"].get)
    cell = f"{best} {record['roles'][best]:.2f}"
    return cell if record["role"] else f"({cell})"
