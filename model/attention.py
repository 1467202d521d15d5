"""Multi-head attention, as in "Attention Is All You Need", section 3.2.

Legend: B batch, Tq query length, Tk key length, D d_model, H heads, Dk = D // H.

    head_i = softmax(Q W_Q_i (K W_K_i)^T / sqrt(Dk)) V W_V_i        MultiHead = concat(head_i) W_O

W_Q, W_K, W_V hold all heads side by side (one D x D matrix each); the heads are separated by a
reshape, so h heads of width D/h cost the same as one head of width D.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mha.model.masks import attention_mask


@dataclass
class KVCache:
    """Keys and values kept between decoding steps, each (B, H, Tk, Dk).

    Self-attention appends each step's K and V; encoder-decoder attention (`static`) projects the
    encoder memory once per sentence and reuses it.
    """

    k: Tensor | None = None
    v: Tensor | None = None
    static: bool = False

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows `index` (beam search)."""
        if self.k is not None:
            self.k, self.v = self.k[index], self.v[index]


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(
                f"d_model ({d_model}) must be divisible by num_heads ({num_heads}): "
                f"d_k would be {d_model / num_heads:.4g}"
            )
        self.num_heads, self.d_k, self.dropout = num_heads, d_model // num_heads, dropout
        self.w_q = nn.Linear(d_model, d_model)  # W_Q: all heads' query projections
        self.w_k = nn.Linear(d_model, d_model)  # W_K
        self.w_v = nn.Linear(d_model, d_model)  # W_V
        self.w_o = nn.Linear(d_model, d_model)  # W_O: mixes the concatenated heads
        self._stacks = {}  # decoding's stacked projections: names -> (weight versions, W, b)

    def forward(
        self, query: Tensor, key: Tensor | None, value: Tensor | None, *,
        key_padding_mask: Tensor | None = None, causal: bool = False, need_weights: bool = False,
        cache: KVCache | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """query (B, Tq, D), key and value (B, Tk, D); key_padding_mask (B, Tk) True at padding.

        Returns output (B, Tq, D) and, if need_weights, attention weights (B, H, Tq, Tk).
        With a static cache already filled, key and value may be None.
        """
        B, Tq, _ = query.shape
        # 1. project (one matmul for the projections that read the same input)
        reuse = cache is not None and cache.static and cache.k is not None
        if key is query and value is query and not reuse:  # self-attention
            q, k, v = self._project(query, "w_q", "w_k", "w_v")  # (B, T, D) each
        else:
            q = self.w_q(query)
            if not reuse:
                k, v = (self._project(key, "w_k", "w_v") if key is value
                        else (self.w_k(key), self.w_v(value)))  # (B, Tk, D) each
        # 2. split heads: (B, T, D) -> (B, H, T, Dk)
        q = self._split(q)  # (B, H, Tq, Dk)
        if reuse:
            k, v = cache.k, cache.v
        else:
            k, v = self._split(k), self._split(v)  # (B, H, Tk, Dk)
            if cache is not None:
                if cache.k is not None:
                    k, v = torch.cat([cache.k, k], dim=2), torch.cat([cache.v, v], dim=2)
                cache.k, cache.v = k, v
        Tk = k.shape[2]
        # 3. attend: softmax(Q K^T / sqrt(Dk)) V
        blocked = attention_mask(key_padding_mask, causal, Tq, Tk, query.device)  # (B|1, 1, Tq, Tk)
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_k)  # (B, H, Tq, Tk)
            if blocked is not None:
                scores = scores.masked_fill(blocked, float("-inf"))
            weights = scores.softmax(dim=-1)
            context = F.dropout(weights, dropout, self.training) @ v  # (B, H, Tq, Dk)
        else:
            weights = None
            if blocked is None or (key_padding_mask is None and Tq == Tk):
                context = _attend(q, k, v, None, dropout, causal=blocked is not None)
            else:  # sdpa's boolean mask marks the positions that take part
                context = _attend(q, k, v, ~blocked, dropout)
        # 4. merge heads: (B, H, Tq, Dk) -> (B, Tq, D), then W_O
        context = context.transpose(1, 2).reshape(B, Tq, self.num_heads * self.d_k)
        return self.w_o(context), weights

    def _project(self, x: Tensor, *names: str) -> tuple[Tensor, ...]:
        """Apply the named projections to the same x in one matmul:
        x [W_1; W_2; ...]^T + [b_1; ...].

        The same maths as calling each, with one pass over x instead of several. Stacking copies
        the weights, so without autograd (decoding) the copy is kept until a weight changes.
        """
        layers = [getattr(self, name) for name in names]
        if torch.is_grad_enabled():
            weight, bias = _stack(layers)
        else:
            version = [(p.data_ptr(), p._version)
                       for layer in layers for p in (layer.weight, layer.bias)]
            if self._stacks.get(names, (None,))[0] != version:
                self._stacks[names] = (version, *_stack(layers))
            _, weight, bias = self._stacks[names]
        return F.linear(x, weight, bias).chunk(len(names), dim=-1)

    def _split(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.num_heads, self.d_k).transpose(1, 2)  # (B, H, T, Dk)


def _attend(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None, dropout: float,
            causal: bool = False) -> Tensor:
    """F.scaled_dot_product_attention, (B, H, Tq, Dk) -> (B, H, Tq, Dk); in fp32 under CPU autocast.

    PyTorch's CPU flash-attention kernel runs ~3x slower in bf16 than in fp32 at this project's
    sizes (many tiny blocks), so under bf16 autocast on the CPU the attention itself stays fp32;
    the projections around it keep bf16's fast matmuls.
    """
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), allowed,
                                                  dropout_p=dropout, is_causal=causal)
    return F.scaled_dot_product_attention(q, k, v, allowed, dropout_p=dropout, is_causal=causal)


def _stack(layers: list[nn.Linear]) -> tuple[Tensor, Tensor]:
    """[W_1; W_2; ...] (n * D, D) and [b_1; b_2; ...] (n * D,): one Linear doing the work of n."""
    return (torch.cat([layer.weight for layer in layers]),
            torch.cat([layer.bias for layer in layers]))
