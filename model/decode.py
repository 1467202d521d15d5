"""Greedy decoding (with or without the KV cache) and beam search.

Legend: B batch, K beam size, S source length, T target length, V vocabulary size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mha.model.masks import padding_mask
from mha.model.transformer import Transformer


def length_limits(src_pad_mask: Tensor, a: float, b: int, max_tokens: int) -> Tensor:
    """(B,) most target tokens per sentence: a * source length + b, within the model's positions."""
    src_lengths = (~src_pad_mask).sum(dim=1)
    return (a * src_lengths + b).long().clamp(max=max_tokens)


@torch.no_grad()
def greedy(
    model: Transformer, src_ids: Tensor, *, bos: int, eos: int, max_len_a: float = 1.5,
    max_len_b: int = 10, use_cache: bool = True,
) -> list[list[int]]:
    """Most probable next token, one step at a time. src_ids (B, S) -> B lists of ids (no BOS/EOS).

    A sentence leaves the batch (and the cache) as soon as it ends, so later steps only work on
    the rows still decoding. Without the cache every step recomputes the whole prefix: same
    output, quadratic work.
    """
    src_pad_mask = padding_mask(src_ids, model.pad_id)
    memory = model.encode(src_ids, src_pad_mask)  # (B, S, D)
    limits = length_limits(src_pad_mask, max_len_a, max_len_b, model.cfg.max_tokens)
    rows = torch.arange(src_ids.shape[0], device=src_ids.device)  # batch index of each live row
    tgt = torch.full((src_ids.shape[0], 1), bos, dtype=torch.long, device=src_ids.device)
    outputs: list[list[int]] = [[] for _ in range(src_ids.shape[0])]
    cache = model.new_cache() if use_cache else None
    for step in range(int(limits.max())):
        hidden = model.decode(tgt[:, -1:] if use_cache else tgt, memory, src_pad_mask, cache)
        next_ids = model.logits(hidden[:, -1]).argmax(dim=-1)  # (b,) for the b live rows
        tgt = torch.cat([tgt, next_ids[:, None]], dim=1)  # (b, step + 2)
        done = next_ids.eq(eos) | (limits <= step + 1)  # (b,)
        if not done.any():
            continue
        for row, ids in zip(rows[done].tolist(), tgt[done, 1:].tolist()):
            outputs[row] = _strip(ids, eos, model.pad_id)
        live = (~done).nonzero().squeeze(1)  # (b',) rows that go on
        if live.numel() == 0:
            break
        rows, tgt, limits = rows[live], tgt[live], limits[live]
        memory, src_pad_mask = memory[live], src_pad_mask[live]  # (b', S, D), (b', S)
        if cache is not None:
            cache.reorder(live)
    return outputs


@torch.no_grad()
def beam_search(
    model: Transformer, src_ids: Tensor, *, beam: int, bos: int, eos: int,
    max_len_a: float = 1.5, max_len_b: int = 10, length_penalty: float = 1.0,
    on_step: Callable[[Tensor, Tensor], None] | None = None,
) -> list[list[int]]:
    """Keep the `beam` best prefixes per sentence; finished ones are ranked by
    log-probability / length ** length_penalty. src_ids (B, S) -> B lists of ids. on_step, if
    given, sees each step's live prefixes: tokens (B*K, step + 2), BOS first, and their summed
    log-probabilities (B, K), -inf in an empty slot."""
    B, K = src_ids.shape[0], beam
    src_pad_mask = padding_mask(src_ids, model.pad_id)
    memory = model.encode(src_ids, src_pad_mask).repeat_interleave(K, dim=0)  # (B*K, S, D)
    src_pad_mask = src_pad_mask.repeat_interleave(K, dim=0)  # (B*K, S)
    limits = length_limits(src_pad_mask, max_len_a, max_len_b,
                           model.cfg.max_tokens).view(B, K)[:, 0]
    cache = model.new_cache()
    tokens = torch.full((B * K, 1), bos, dtype=torch.long, device=src_ids.device)
    scores = torch.full((B, K), float("-inf"), device=src_ids.device)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    done = [False] * B
    for step in range(int(limits.max())):
        hidden = model.decode(tokens[:, -1:], memory, src_pad_mask, cache)[:, -1]  # (B*K, D)
        log_probs = model.logits(hidden).float().log_softmax(dim=-1)  # (B*K, V)
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
        for b in range(B):  # done once no live prefix can still beat the K-th best ending
            best_live = new_scores[b].max().item() / int(limits[b]) ** length_penalty
            done[b] = step + 1 >= limits[b] or (
                len(finished[b]) >= K and sorted(finished[b])[-K][0] >= best_live)
        order = origin.view(-1)
        tokens = torch.cat([tokens[order], new_tokens.view(-1, 1)], dim=1)  # (B*K, step + 2)
        if on_step is not None:
            on_step(tokens, new_scores)
        if all(done):
            break
        cache.reorder(order)
        scores = new_scores
    return [max(f)[1] if f else [] for f in finished]


def _extend(b: int, ranked, tokens: Tensor, finished: list, new: tuple, *, length: int,
            vocab: int, eos: int, limit: int, length_penalty: float) -> None:
    """Sentence b's beam: from `ranked` (score, parent * V + token), best first, fill its K rows
    of `new` (scores, tokens, origin), each (B, K); endings go to `finished` as (score, ids)."""
    new_scores, new_tokens, origin = new
    K, kept = new_scores.shape[1], 0
    for rank, (score, index) in enumerate(ranked):
        parent, token = divmod(index, vocab)
        if token == eos and rank >= K:  # an ending only counts among the K best (fairseq)
            continue
        if token == eos or length >= limit:
            prefix = tokens[b * K + parent, 1:].tolist() + ([] if token == eos else [token])
            finished.append((score / length ** length_penalty, prefix))
            continue
        new_scores[b, kept], new_tokens[b, kept] = score, token
        origin[b, kept] = b * K + parent
        kept += 1
        if kept == K:
            return


def _strip(ids: list[int], eos: int, pad: int) -> list[int]:
    """The ids before the first EOS or padding."""
    return ids[:next((i for i, token in enumerate(ids) if token in (eos, pad)), len(ids))]
