"""Parameters and forward FLOPs by component, from the config alone (`mha info`).

A multiply-add counts as 2 FLOPs. Per token, each D x D projection costs 2 D^2 whatever the head
count: h heads of width D/h do the same work as one head of width D. Scores and the weighted sum
cost 2 * 2 * D per key, again independent of h. Training costs 3x the forward (backward ~ 2x).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch.utils.benchmark import Timer
from torch.utils.flop_counter import FlopCounterMode

from mha.configs.schema import ModelConfig
from mha.model.attention import MultiHeadAttention


@dataclass(frozen=True)
class Component:
    name: str
    params: int
    src_flops: float  # forward FLOPs per source token
    tgt_flops: float  # forward FLOPs per target token


def components(cfg: ModelConfig, src_vocab: int, tgt_vocab: int, src_len: float = 16,
               tgt_len: float = 16) -> list[Component]:
    """The model's parts at mean lengths src_len and tgt_len (attention scores grow with them)."""
    D, F, Le, Ld = cfg.d_model, cfg.d_ff, cfg.encoder_layers, cfg.decoder_layers
    projection = D * D + D  # one of W_Q, W_K, W_V, W_O with its bias
    embed_params = src_vocab * D if cfg.tie_embeddings else (src_vocab + 2 * tgt_vocab) * D
    if cfg.positional == "learned":
        embed_params += cfg.max_positions * D
    norms = 2 * D * (2 * Le + 3 * Ld + (2 if cfg.norm == "pre" else 0))
    projections = (Le + 2 * Ld) * projection  # one of them in every attention block
    return [
        Component("embeddings + output", embed_params, 0, 2 * D * tgt_vocab),
        Component("attention W_Q", projections, Le * 2 * D * D, 2 * Ld * 2 * D * D),
        Component("attention W_K", projections, (Le + Ld) * 2 * D * D, Ld * 2 * D * D),
        Component("attention W_V", projections, (Le + Ld) * 2 * D * D, Ld * 2 * D * D),
        Component("attention W_O", projections, Le * 2 * D * D, 2 * Ld * 2 * D * D),
        Component("attention scores + sum", 0, Le * 4 * D * src_len,
                  Ld * 4 * D * (tgt_len + src_len)),
        Component("feed-forward", (Le + Ld) * (2 * D * F + F + D), Le * 4 * D * F, Ld * 4 * D * F),
        Component("layer norms", norms, 0, 0),
    ]


def parameter_count(cfg: ModelConfig, src_vocab: int, tgt_vocab: int) -> int:
    return sum(c.params for c in components(cfg, src_vocab, tgt_vocab))


def training_flops(cfg: ModelConfig, src_vocab: int, tgt_vocab: int, src_tokens: int,
                   tgt_tokens: int, src_len: float, tgt_len: float) -> float:
    """Forward + backward FLOPs of one batch: 3 x the forward count."""
    parts = components(cfg, src_vocab, tgt_vocab, src_len, tgt_len)
    return 3 * sum(c.src_flops * src_tokens + c.tgt_flops * tgt_tokens for c in parts)


HEAD_COUNTS = (1, 2, 4, 8, 16, 32)  # the head counts `mha info` compares (those dividing d_model)


def format_info(cfg: ModelConfig, src_vocab: int, tgt_vocab: int, src_len: float = 16,
                tgt_len: float = 16) -> str:
    """The `mha info` report: parameters and forward FLOPs by component, totals, d_k, and the
    attention FLOPs recomputed for every head count in HEAD_COUNTS that divides d_model."""
    parts = components(cfg, src_vocab, tgt_vocab, src_len, tgt_len)
    total = Component("total", sum(c.params for c in parts), sum(c.src_flops for c in parts),
                      sum(c.tgt_flops for c in parts))
    lines = [
        (f"d_model {cfg.d_model}, heads {cfg.heads}, d_k = d_model / heads = "
         f"{cfg.d_model // cfg.heads}, {cfg.encoder_layers} + {cfg.decoder_layers} layers, "
         f"d_ff {cfg.d_ff}, vocabulary {src_vocab:,} -> {tgt_vocab:,}"),
        (f"forward FLOPs (a multiply-add is 2) at source length {src_len:g} and target length "
         f"{tgt_len:g}; per token = per sentence pair / (source + target tokens)"),
        "",
        (f"{'component':<24} {'parameters':>12} {'per src token':>14} {'per tgt token':>14} "
         f"{'per token':>10}"),
    ]
    for c in [*parts, total]:
        lines.append(f"{c.name:<24} {c.params:>12,} {_si(c.src_flops):>14} {_si(c.tgt_flops):>14} "
                     f"{_si(_per_token([c], src_len, tgt_len)):>10}")
    forward = _per_token(parts, src_len, tgt_len)
    lines.append(f"\ntraining FLOPs per token (3 x forward): {_si(3 * forward)}; "
                 "bench/train_speed.py counts these for MFU")
    heads = [h for h in HEAD_COUNTS if cfg.d_model % h == 0]
    attention = [_si(_per_token(_attention_rows(cfg, h, src_len, tgt_len), src_len, tgt_len))
                 for h in heads]
    lines.append(f"attention FLOPs per token for h = {', '.join(map(str, heads))}: "
                 f"{', '.join(attention)} - h heads of width d_model/h cost the same as one "
                 "full-width head")
    return "\n".join(lines)


def measure_heads(d_model: int, length: int = 16,
                  batch: int = 32) -> list[tuple[int, float, float]]:
    """The claim measured, not restated: for each h in HEAD_COUNTS dividing d_model, one real
    MultiHeadAttention self-attention block on (batch, length, d_model) gives (h, forward FLOPs
    per token as torch's FlopCounterMode counts them on the written-out path, the median seconds
    of the default path by torch.utils.benchmark on one thread)."""
    x = torch.randn(batch, length, d_model)  # (B, T, D)
    rows = []
    for heads in (h for h in HEAD_COUNTS if d_model % h == 0):
        block = MultiHeadAttention(d_model, heads).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            block(x, x, x, need_weights=True)
        timer = Timer("with torch.no_grad(): block(x, x, x)", num_threads=1,
                      globals={"torch": torch, "block": block, "x": x})
        seconds = timer.blocked_autorange(min_run_time=0.2).median
        rows.append((heads, counter.get_total_flops() / (batch * length), seconds))
    return rows


def format_measured(rows: list[tuple[int, float, float]], d_model: int, length: int) -> str:
    """`mha info --measure`'s table: FLOPs equal for every h, times side by side."""
    fastest = min(seconds for _, _, seconds in rows)
    lines = [(f"one self-attention block, d_model {d_model}, {length} tokens a sentence, batch "
              "32 (FLOPs: torch's count of the real module; time: median, one thread)"),
             f"{'h':>3} {'d_k':>5} {'FLOPs per token':>16} {'ms a block':>11} {'x fastest':>10}"]
    for heads, flops, seconds in rows:
        lines.append(f"{heads:>3} {d_model // heads:>5} {_si(flops):>16} {seconds * 1e3:>11.3f} "
                     f"{seconds / fastest:>10.2f}")
    return "\n".join(lines)


def _attention_rows(cfg: ModelConfig, heads: int, src_len: float,
                    tgt_len: float) -> list[Component]:
    """W_Q, W_K, W_V, W_O and the scores of the same model with `heads` heads."""
    parts = components(replace(cfg, heads=heads), 1, 1, src_len, tgt_len)
    return [c for c in parts if c.name.startswith("attention")]


def _per_token(parts: list[Component], src_len: float, tgt_len: float) -> float:
    """Forward FLOPs of a sentence pair at these lengths, per token (source and target alike)."""
    return sum(c.src_flops * src_len + c.tgt_flops * tgt_len for c in parts) / (src_len + tgt_len)


def _si(flops: float) -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if flops >= scale:
            return f"{flops / scale:.3g}{suffix}"
    return f"{flops:.3g}"
