"""Greedy decoding (with or without the KV cache; or drawing each token, model/sample.py) and
beam search, each able to start from a forced target prefix.

Both return `Hypothesis` objects: the output ids, their summed log-probability and the score the
search ranks by, log-probability / length ** length_penalty (length: the tokens chosen, EOS
included). A forced prefix is part of the output but not of the score: the model did not choose
it (CTranslate2 counts it the same way).

Legend: B batch, K beam size, P prefix length, S source length, T target length, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from mha.model.masks import padding_mask
from mha.model.transformer import Transformer


@dataclass(frozen=True, order=True)
class Hypothesis:
    """One output: the score the search ranks by (hypotheses sort by it), the summed
    log-probability of the tokens the model chose, and the ids without BOS/EOS (a forced
    prefix included)."""

    score: float
    log_prob: float
    ids: list[int]


def length_limits(src_pad_mask: Tensor, a: float, b: int, max_tokens: int,
                  prefix_lengths: Tensor | None = None) -> Tensor:
    """(B,) most target tokens per sentence: a * source length + b, at least one past a forced
    prefix of prefix_lengths (B,) tokens, within the model's positions."""
    src_lengths = (~src_pad_mask).sum(dim=1)
    limits = (a * src_lengths + b).long()
    if prefix_lengths is not None:
        limits = torch.maximum(limits, prefix_lengths + 1)
    return limits.clamp(max=max_tokens)


def force_prefix(log_probs: Tensor, prefixes: Tensor | None, step: int) -> Tensor:
    """Rows whose prefix has a token at `step` must take it, at no cost to their score.
    log_probs (b, V) (or logits: a forced row becomes 0 at its token, -inf elsewhere, whose
    log_softmax is itself); prefixes (b, P), -1 past each row's prefix; None: nothing forced."""
    if prefixes is None or step >= prefixes.shape[1]:
        return log_probs
    forced = prefixes[:, step]  # (b,)
    rows = forced.ge(0).nonzero().squeeze(1)
    log_probs[rows] = float("-inf")
    log_probs[rows, forced[rows]] = 0.0
    return log_probs


def most_probable(logits: Tensor) -> Tensor:
    """Greedy's choice: logits (or log-probabilities) (b, V) -> token ids (b,)."""
    return logits.argmax(dim=-1)


def chosen_log_probs(logits: Tensor, chosen: Tensor) -> Tensor:
    """log softmax(logits) at the chosen tokens only: logits (b, V), chosen (b,) -> (b,).
    A log_softmax over the whole vocabulary would write b * V values to read b of them. A row
    `force_prefix` forced (0 at its token, -inf elsewhere) gets 0."""
    return logits.gather(1, chosen[:, None]).squeeze(1) - logits.logsumexp(dim=-1)


@torch.no_grad()
def greedy(
    model: Transformer, src_ids: Tensor, *, bos: int, eos: int, max_len_a: float = 1.5,
    max_len_b: int = 10, use_cache: bool = True, length_penalty: float = 1.0,
    prefixes: Tensor | None = None, choose: Callable[[Tensor], Tensor] = most_probable,
) -> list[Hypothesis]:
    """One token per step, `choose`n from its logits (default: the most probable; a Sampler
    draws one), its log-probability taken for that token alone. src_ids (B, S) -> B hypotheses.

    A sentence leaves the batch (and the cache) as soon as it ends, so later steps only work on
    the rows still decoding. Without the cache every step recomputes the whole prefix: same
    output, quadratic work.
    """
    src_pad_mask = padding_mask(src_ids, model.pad_id)
    memory = model.encode(src_ids, src_pad_mask)  # (B, S, D)
    limits = length_limits(src_pad_mask, max_len_a, max_len_b, model.cfg.max_tokens,
                           _lengths(prefixes))
    rows = torch.arange(src_ids.shape[0], device=src_ids.device)  # batch index of each live row
    tgt = torch.full((src_ids.shape[0], 1), bos, dtype=torch.long, device=src_ids.device)
    log_prob = torch.zeros(src_ids.shape[0], device=src_ids.device)  # (b,) summed so far
    outputs: list[Hypothesis] = [Hypothesis(0.0, 0.0, [])] * src_ids.shape[0]
    cache = model.new_cache() if use_cache else None
    for step in range(int(limits.max())):
        hidden = model.decode(tgt[:, -1:] if use_cache else tgt, memory, src_pad_mask, cache)
        logits = force_prefix(model.logits(hidden[:, -1]).float(), prefixes, step)  # (b, V)
        next_ids = choose(logits)  # (b,) for the b live rows
        log_prob += chosen_log_probs(logits, next_ids)
        tgt = torch.cat([tgt, next_ids[:, None]], dim=1)  # (b, step + 2)
        done = next_ids.eq(eos) | (limits <= step + 1)  # (b,)
        if not done.any():
            continue
        for row, ids, total in zip(rows[done].tolist(), tgt[done, 1:].tolist(),
                                   log_prob[done].tolist()):
            outputs[row] = Hypothesis(total / (step + 1) ** length_penalty, total,
                                      _strip(ids, eos, model.pad_id))
        live = (~done).nonzero().squeeze(1)  # (b',) rows that go on
        if live.numel() == 0:
            break
        rows, tgt, limits, log_prob = rows[live], tgt[live], limits[live], log_prob[live]
        memory, src_pad_mask = memory[live], src_pad_mask[live]  # (b', S, D), (b', S)
        prefixes = None if prefixes is None else prefixes[live]  # (b', P)
        if cache is not None:
            cache.reorder(live)
    return outputs


@torch.no_grad()
def beam_search(
    model: Transformer, src_ids: Tensor, *, beam: int, bos: int, eos: int,
    max_len_a: float = 1.5, max_len_b: int = 10, length_penalty: float = 1.0, nbest: int = 1,
    prefixes: Tensor | None = None, on_step: Callable[[Tensor, Tensor], None] | None = None,
) -> list[list[Hypothesis]]:
    """Keep the `beam` best prefixes per sentence; finished ones are ranked by
    log-probability / length ** length_penalty. src_ids (B, S) -> per sentence, its `nbest`
    (at most `beam`) best hypotheses, best first. on_step, if given, sees each step's live
    prefixes: tokens (B*K, step + 2), BOS first, and their summed log-probabilities (B, K),
    -inf in an empty slot."""
    B, K = src_ids.shape[0], beam
    src_pad_mask = padding_mask(src_ids, model.pad_id)
    memory = model.encode(src_ids, src_pad_mask).repeat_interleave(K, dim=0)  # (B*K, S, D)
    src_pad_mask = src_pad_mask.repeat_interleave(K, dim=0)  # (B*K, S)
    prefixes = None if prefixes is None else prefixes.repeat_interleave(K, dim=0)  # (B*K, P)
    limits = length_limits(src_pad_mask, max_len_a, max_len_b, model.cfg.max_tokens,
                           _lengths(prefixes)).view(B, K)[:, 0]
    cache = model.new_cache()
    tokens = torch.full((B * K, 1), bos, dtype=torch.long, device=src_ids.device)
    scores = torch.full((B, K), float("-inf"), device=src_ids.device)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]
    done = [False] * B
    for step in range(int(limits.max())):
        hidden = model.decode(tokens[:, -1:], memory, src_pad_mask, cache)[:, -1]  # (B*K, D)
        log_probs = model.logits(hidden).float().log_softmax(dim=-1)  # (B*K, V)
        log_probs = force_prefix(log_probs, prefixes, step)
        V = log_probs.shape[-1]
        candidates = (scores.view(B * K, 1) + log_probs).view(B, K * V)
        top_scores, top_index = candidates.topk(2 * K, dim=1)  # (B, 2K): enough to refill K
        new_scores = torch.full((B, K), float("-inf"), device=src_ids.device)
        origin = torch.arange(B * K, device=src_ids.device).view(B, K) // K * K  # placeholders
        new_tokens = torch.full((B, K), model.pad_id, dtype=torch.long, device=src_ids.device)
        new = (new_scores, new_tokens, origin)
        for b in range(B):
            if not done[b]:
                ranked = zip(top_scores[b].tolist(), top_index[b].tolist())
                _extend(b, ranked, tokens, finished[b], new, length=step + 1, vocab=V, eos=eos,
                        limit=int(limits[b]), length_penalty=length_penalty)
                done[b] = _finished(finished[b], new_scores[b], step + 1, int(limits[b]),
                                    length_penalty)
        order = origin.view(-1)
        tokens = torch.cat([tokens[order], new_tokens.view(-1, 1)], dim=1)  # (B*K, step + 2)
        if on_step is not None:
            on_step(tokens, new_scores)
        if all(done):
            break
        cache.reorder(order)
        scores = new_scores
    return [sorted(f, reverse=True)[:nbest] for f in finished]


def _extend(b: int, ranked, tokens: Tensor, finished: list, new: tuple, *, length: int,
            vocab: int, eos: int, limit: int, length_penalty: float) -> None:
    """Sentence b's beam: from `ranked` (score, parent * V + token), best first, fill its K rows
    of `new` (scores, tokens, origin), each (B, K); endings go to `finished` as Hypotheses."""
    new_scores, new_tokens, origin = new
    K, kept = new_scores.shape[1], 0
    for rank, (score, index) in enumerate(ranked):
        if score == float("-inf"):  # only impossible ones left (a forced prefix allows one)
            return
        parent, token = divmod(index, vocab)
        if token == eos and rank >= K:  # an ending only counts among the K best (fairseq)
            continue
        if token == eos or length >= limit:
            prefix = tokens[b * K + parent, 1:].tolist() + ([] if token == eos else [token])
            finished.append(Hypothesis(score / length ** length_penalty, score, prefix))
            continue
        new_scores[b, kept], new_tokens[b, kept] = score, token
        origin[b, kept] = b * K + parent
        kept += 1
        if kept == K:
            return


def _finished(finished: list[Hypothesis], live_scores: Tensor, length: int, limit: int,
              length_penalty: float) -> bool:
    """A sentence is done at its limit, or once no live prefix (live_scores (K,)) can still beat
    the K-th best ending: a prefix's log-probability only falls as it grows."""
    K = live_scores.shape[0]
    best_live = live_scores.max().item() / limit ** length_penalty
    return length >= limit or (len(finished) >= K and sorted(finished)[-K].score >= best_live)


def _lengths(prefixes: Tensor | None) -> Tensor | None:
    """(B,) tokens in each forced prefix of prefixes (B, P), -1 past its end."""
    return None if prefixes is None else prefixes.ge(0).sum(dim=1)


def _strip(ids: list[int], eos: int, pad: int) -> list[int]:
    """The ids before the first EOS or padding."""
    return ids[:next((i for i, token in enumerate(ids) if token in (eos, pad)), len(ids))]
