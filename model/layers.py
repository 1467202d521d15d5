"""The transformer's building blocks: feed-forward, positional encoding, encoder and decoder layers.

Legend: B batch, S source length, T target length, D d_model, F d_ff.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from mha.configs.schema import ModelConfig
from mha.model.attention import KVCache, MultiHeadAttention
from mha.model.dropout import Dropout


class FeedForward(nn.Module):
    """FFN(x) = W_2 act(W_1 x + b_1) + b_2, applied at every position: (B, T, D) -> (B, T, D)."""

    def __init__(self, d_model: int, d_ff: int, dropout: float, activation: str = "relu") -> None:
        super().__init__()
        self.w_1, self.w_2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)
        self.activation = nn.GELU() if activation == "gelu" else nn.ReLU()
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(self.dropout(self.activation(self.w_1(x))))  # (B, T, F) inside


class SinusoidalPositions(nn.Module):
    """PE(pos, 2i) = sin(pos / 10000^(2i/D)), PE(pos, 2i+1) = cos(...): a fixed (P, D) table."""

    def __init__(self, max_positions: int, d_model: int) -> None:
        super().__init__()
        position = torch.arange(max_positions).unsqueeze(1)  # (P, 1)
        frequency = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        table = torch.zeros(max_positions, d_model)
        table[:, 0::2] = torch.sin(position * frequency)
        table[:, 1::2] = torch.cos(position * frequency)
        self.register_buffer("table", table, persistent=False)

    def forward(self, length: int, offset: int = 0) -> Tensor:
        return self.table[offset:offset + length]  # (T, D)


class LearnedPositions(nn.Module):
    """One trained vector per position."""

    def __init__(self, max_positions: int, d_model: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(max_positions, d_model)

    def forward(self, length: int, offset: int = 0) -> Tensor:
        return self.embedding.weight[offset:offset + length]  # (T, D)


class Residual(nn.Module):
    """A sublayer with its residual connection, dropout and LayerNorm.

    pre-norm:  x + dropout(f(norm(x)))          post-norm (the paper's): norm(x + dropout(f(x)))
    """

    def __init__(self, d_model: int, dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.norm, self.dropout, self.pre_norm = nn.LayerNorm(d_model), Dropout(dropout), pre_norm

    def forward(self, x: Tensor, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        if self.pre_norm:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


def attention_args(cfg: ModelConfig) -> tuple:
    return cfg.d_model, cfg.heads, cfg.attention_dropout, cfg.attention_scale


class EncoderLayer(nn.Module):
    """Self-attention over the source, then feed-forward."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(*attention_args(cfg))
        self.feed_forward = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout, cfg.activation)
        pre = cfg.norm == "pre"
        self.attn_block = Residual(cfg.d_model, cfg.dropout, pre)
        self.ff_block = Residual(cfg.d_model, cfg.dropout, pre)

    def forward(self, x: Tensor, src_pad_mask: Tensor | None) -> Tensor:
        """x (B, S, D), src_pad_mask (B, S) True at padding -> (B, S, D)."""
        x = self.attn_block(x, lambda h: self.self_attn(
            h, h, h, key_padding_mask=src_pad_mask)[0])
        return self.ff_block(x, self.feed_forward)


class DecoderLayer(nn.Module):
    """Masked self-attention, encoder-decoder attention, feed-forward."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(*attention_args(cfg))
        self.cross_attn = MultiHeadAttention(*attention_args(cfg))
        self.feed_forward = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout, cfg.activation)
        pre = cfg.norm == "pre"
        self.self_block = Residual(cfg.d_model, cfg.dropout, pre)
        self.cross_block = Residual(cfg.d_model, cfg.dropout, pre)
        self.ff_block = Residual(cfg.d_model, cfg.dropout, pre)

    def forward(
        self, x: Tensor, memory: Tensor, src_pad_mask: Tensor | None,
        cache: tuple[KVCache, KVCache] | None = None,
    ) -> Tensor:
        """x (B, T, D) target states, memory (B, S, D) encoder output -> (B, T, D).

        Target padding needs no mask: it only sits after EOS, and the causal mask already keeps
        every real position from seeing it.
        """
        self_cache, cross_cache = cache if cache is not None else (None, None)
        x = self.self_block(x, lambda h: self.self_attn(
            h, h, h, causal=True, cache=self_cache)[0])
        # queries from the decoder; keys and values from the encoder output
        x = self.cross_block(x, lambda h: self.cross_attn(
            h, memory, memory, key_padding_mask=src_pad_mask, cache=cross_cache)[0])
        return self.ff_block(x, self.feed_forward)
