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

    def extend(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append this step's k and v (B, H, t, Dk); returns all keys and values so far."""
        if self.k is not None:
            k, v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
        self.k, self.v = k, v
        return k, v

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows `index` (beam search)."""
        if self.k is not None:
            self.k, self.v = self.k[index], self.v[index]


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0,
                 scaled: bool = True) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(
                f"d_model ({d_model}) must be divisible by num_heads ({num_heads}): "
                f"d_k would be {d_model / num_heads:.4g}"
            )
        self.num_heads, self.d_k, self.dropout = num_heads, d_model // num_heads, dropout
        # 1/sqrt(Dk) keeps the logits' spread near 1 whatever Dk is; `scaled=False` (config
        # model.attention_scale: false) leaves it out, to see the softmax saturate without it
        self.scale = 1 / math.sqrt(self.d_k) if scaled else 1.0
        self.w_q = nn.Linear(d_model, d_model)  # W_Q: all heads' query projections
        self.w_k = nn.Linear(d_model, d_model)  # W_K
        self.w_v = nn.Linear(d_model, d_model)  # W_V
        self.w_o = nn.Linear(d_model, d_model)  # W_O: mixes the concatenated heads
        # (H,): 1 keeps a head, 0 removes it (its output is zero before W_O mixes the heads, as
        # in Michel et al. 2019); a tensor that requires grad gives each head's importance
        self.head_mask: Tensor | None = None

    def forward(
        self, query: Tensor, key: Tensor, value: Tensor, *,
        key_padding_mask: Tensor | None = None, causal: bool = False, need_weights: bool = False,
        cache: KVCache | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """query (B, Tq, D), key and value (B, Tk, D); key_padding_mask (B, Tk) True at padding.

        Returns output (B, Tq, D) and, if need_weights, attention weights (B, H, Tq, Tk).
        """
        B, Tq, _ = query.shape
        # 1. project and 2. split heads: (B, T, D) -> (B, H, T, Dk)
        q, k, v = self.project(query, key, value, cache)
        # 3. attend: softmax(Q K^T / sqrt(Dk)) V
        Tk = k.shape[2]
        blocked = attention_mask(key_padding_mask, causal, Tq, Tk, query.device)
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            scores = q @ k.transpose(-2, -1) * self.scale  # (B, H, Tq, Tk)
            if blocked is not None:  # (B|1, 1, Tq, Tk)
                scores = scores.masked_fill(blocked, float("-inf"))
            weights = scores.softmax(dim=-1)
            context = F.dropout(weights, dropout, self.training) @ v  # (B, H, Tq, Dk)
        else:  # the same maths in one kernel; tests/test_attention.py proves they agree
            weights = None
            # a square causal mask: the kernel's own (known without comparing lengths, which
            # torch.compile's dynamic shapes could not decide)
            causal_only = (blocked is not None and key_padding_mask is None and query is key
                           and cache is None)
            context = kernel_attention(q, k, v, blocked, causal_only, dropout, self.scale)
        if self.head_mask is not None:
            context = context * self.head_mask.view(1, self.num_heads, 1, 1)  # (B, H, Tq, Dk)
        # 4. merge heads: (B, H, Tq, Dk) -> (B, Tq, D), then W_O
        context = context.transpose(1, 2).reshape(B, Tq, self.num_heads * self.d_k)
        return self.w_o(context), weights

    def project(
        self, query: Tensor, key: Tensor, value: Tensor, cache: KVCache | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Q = query W_Q, K = key W_K, V = value W_V, split into heads: (B, H, T, Dk) each.

        With a cache, K and V also hold the earlier steps' (or, static, the memory's)."""
        q = self.split(self.w_q(query))  # (B, H, Tq, Dk)
        if cache is not None and cache.static and cache.k is not None:
            return q, cache.k, cache.v  # the memory's, projected at the first step
        k, v = self.split(self.w_k(key)), self.split(self.w_v(value))  # (B, H, Tk, Dk)
        return (q, *cache.extend(k, v)) if cache is not None else (q, k, v)

    def split(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.num_heads, self.d_k).transpose(1, 2)  # (B, H, T, Dk)


def kernel_attention(q: Tensor, k: Tensor, v: Tensor, blocked: Tensor | None, causal: bool,
                    dropout: float, scale: float | None = None) -> Tensor:
    """softmax(Q K^T * scale) V (scale None: 1/sqrt(Dk)) by F.scaled_dot_product_attention:
    (B, H, Tq, Dk) each -> (B, H, Tq, Dk). `blocked` (B|1, 1, Tq, Tk) True where a key is
    hidden; when it is only the causal mask of a square (`causal`), the kernel builds that itself.

    Under CPU bf16 autocast, the attention itself runs in fp32 and the projections around it stay
    bf16: PyTorch's CPU flash-attention kernel runs ~3x slower in bf16 than in fp32 at this
    project's sizes (many tiny blocks). Measured (README, "The attention kernel"): forward and
    backward at B 64, H 4, T 24, Dk 64 took 49 ms in bf16 against 15 ms in fp32; the attention's
    share of a bf16 update fell from 27% to 11.5%.
    """
    allowed = None if blocked is None or causal else ~blocked  # sdpa marks who takes part
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), allowed,
                                                  dropout_p=dropout, is_causal=causal, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, allowed, dropout_p=dropout, is_causal=causal,
                                          scale=scale)


class AttentionRecorder:
    """Keeps the attention weights (B, H, Tq, Tk) of every MultiHeadAttention in `model`, by name
    ("encoder.0.self_attn", "decoder.2.cross_attn", ...), from the passes run inside `with`:

        with AttentionRecorder(model) as weights:
            model(src_ids, tgt_in)
        weights["decoder.0.cross_attn"]  # (B, H, T, S)

    A forward pre-hook asks each attention module for its weights (need_weights=True) and a
    forward hook keeps them; outside `with`, the model runs as before.
    """

    def __init__(self, model: nn.Module) -> None:
        self.names = {module: name for name, module in model.named_modules()
                      if isinstance(module, MultiHeadAttention)}
        self.weights: dict[str, Tensor] = {}

    def __enter__(self) -> dict[str, Tensor]:
        """Returns the dict that the passes fill: name -> weights."""
        self.handles = []
        for module in self.names:
            self.handles += [module.register_forward_pre_hook(self.ask, with_kwargs=True),
                             module.register_forward_hook(self.keep)]
        return self.weights

    def __exit__(self, *error: object) -> None:
        for handle in self.handles:
            handle.remove()

    def ask(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args, {**kwargs, "need_weights": True}

    def keep(self, module: nn.Module, args: tuple, output: tuple[Tensor, Tensor]) -> None:
        self.weights[self.names[module]] = output[1]
