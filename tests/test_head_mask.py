"""Masking heads (Michel et al. 2019): a removed head's output is zero before W_O mixes them."""

import math

import pytest
import torch

from mha.model import MultiHeadAttention
from mha.model.fused import FusedAttention

D, H = 32, 4


def by_hand(attention: MultiHeadAttention, x: torch.Tensor, memory: torch.Tensor,
            pad: torch.Tensor, removed: int) -> torch.Tensor:
    """Cross-attention written out head by head, leaving head `removed` out of the concat."""
    dk = D // H
    q, k, v = attention.w_q(x), attention.w_k(memory), attention.w_v(memory)
    heads = []
    for h in range(H):
        part = slice(h * dk, (h + 1) * dk)
        scores = q[..., part] @ k[..., part].transpose(1, 2) / math.sqrt(dk)  # (B, T, S)
        weights = scores.masked_fill(pad[:, None, :], float("-inf")).softmax(-1)
        context = weights @ v[..., part]  # (B, T, Dk)
        heads.append(torch.zeros_like(context) if h == removed else context)
    return attention.w_o(torch.cat(heads, dim=-1))  # (B, T, D)


@pytest.mark.parametrize("removed", range(H))
@pytest.mark.parametrize("need_weights", [True, False])
def test_masking_head_i_equals_the_layer_computed_without_it(removed, need_weights):
    torch.manual_seed(removed)
    attention = MultiHeadAttention(D, H).eval()
    x, memory = torch.randn(2, 5, D), torch.randn(2, 7, D)
    pad = torch.tensor([[False] * 7, [False] * 4 + [True] * 3])  # (B, S)
    attention.head_mask = torch.ones(H).index_fill(0, torch.tensor(removed), 0.0)
    with torch.no_grad():
        out, _ = attention(x, memory, memory, key_padding_mask=pad, need_weights=need_weights)
        torch.testing.assert_close(out, by_hand(attention, x, memory, pad, removed))
        attention.head_mask = None
        kept, _ = attention(x, memory, memory, key_padding_mask=pad)
    assert not torch.allclose(out, kept)  # head `removed` mattered


def test_masking_every_head_leaves_only_w_o_bias_and_fused_decoding_follows():
    torch.manual_seed(0)
    attention = MultiHeadAttention(D, H).eval()
    x = torch.randn(2, 5, D)
    attention.head_mask = torch.zeros(H)
    with torch.no_grad():
        out, _ = attention(x, x, x, causal=True)
        torch.testing.assert_close(out, attention.w_o.bias.expand(2, 5, D))
        attention.head_mask = torch.tensor([1.0, 0.0, 1.0, 1.0])
        fused = FusedAttention(attention, self_attention=True)  # decoding keeps the mask
        torch.testing.assert_close(fused(x, x, x, causal=True)[0],
                                   attention(x, x, x, causal=True)[0])


def test_a_mask_that_requires_grad_gets_each_heads_importance():
    # Michel et al.'s estimate: |d loss / d mask_h| at mask = 1
    torch.manual_seed(0)
    attention = MultiHeadAttention(D, H)
    x = torch.randn(2, 5, D)
    attention.head_mask = torch.ones(H, requires_grad=True)
    attention(x, x, x)[0].square().sum().backward()
    grad = attention.head_mask.grad
    assert grad.shape == (H,) and grad.abs().gt(0).all()
