"""Parameters and forward FLOPs by component, from the config alone (`mha info`).

A multiply-add counts as 2 FLOPs. Per token, each D x D projection costs 2 D^2 whatever the head
count: h heads of width D/h do the same work as one head of width D. Scores and the weighted sum
cost 2 * 2 * D per key, again independent of h. Training costs 3x the forward (backward ~ 2x).
"""

from __future__ import annotations

from dataclasses import dataclass

from mha.configs.schema import ModelConfig


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
    return [
        Component("embeddings + output", embed_params, 0, 2 * D * tgt_vocab),
        Component("attention W_Q", (Le + 2 * Ld) * projection, Le * 2 * D * D, 2 * Ld * 2 * D * D),
        Component("attention W_K", (Le + 2 * Ld) * projection, (Le + Ld) * 2 * D * D, Ld * 2 * D * D),
        Component("attention W_V", (Le + 2 * Ld) * projection, (Le + Ld) * 2 * D * D, Ld * 2 * D * D),
        Component("attention W_O", (Le + 2 * Ld) * projection, Le * 2 * D * D, 2 * Ld * 2 * D * D),
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
