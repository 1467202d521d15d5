"""MultiHeadAttention against torch.nn.MultiheadAttention, masks, and the fast path."""

import pytest
import torch
from torch import nn

from mha.model import MultiHeadAttention
from mha.model.attention import AttentionRecorder, KVCache
from mha.model.fused import FusedAttention, fuse_projections

D = 32


def reference_for(ours: MultiHeadAttention, heads: int) -> nn.MultiheadAttention:
    ref = nn.MultiheadAttention(D, heads, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.w_q.weight, ours.w_k.weight, ours.w_v.weight]))
        ref.in_proj_bias.copy_(torch.cat([ours.w_q.bias, ours.w_k.bias, ours.w_v.bias]))
        ref.out_proj.weight.copy_(ours.w_o.weight)
        ref.out_proj.bias.copy_(ours.w_o.bias)
    return ref.eval()


@pytest.mark.parametrize("heads", [1, 2, 4, 8])
@pytest.mark.parametrize("need_weights", [True, False])
def test_causal_self_attention_equals_torch(heads, need_weights):
    torch.manual_seed(heads)
    ours = MultiHeadAttention(D, heads).eval()
    x = torch.randn(3, 7, D)
    out, _ = ours(x, x, x, causal=True, need_weights=need_weights)
    blocked = torch.ones(7, 7, dtype=torch.bool).triu(1)
    expected, _ = reference_for(ours, heads)(x, x, x, attn_mask=blocked)
    assert (out - expected).abs().max() < 1e-5


@pytest.mark.parametrize("heads", [1, 2, 4, 8])
@pytest.mark.parametrize("need_weights", [True, False])
def test_cross_attention_with_padding_equals_torch(heads, need_weights):
    torch.manual_seed(heads)
    ours = MultiHeadAttention(D, heads).eval()
    query, memory = torch.randn(3, 5, D), torch.randn(3, 9, D)
    pad = torch.zeros(3, 9, dtype=torch.bool)
    pad[1, 6:] = True
    pad[2, 3:] = True
    out, weights = ours(query, memory, memory, key_padding_mask=pad, need_weights=need_weights)
    expected, expected_weights = reference_for(ours, heads)(
        query, memory, memory, key_padding_mask=pad, average_attn_weights=False)
    assert (out - expected).abs().max() < 1e-5
    if need_weights:
        assert (weights - expected_weights).abs().max() < 1e-5


def test_weights_sum_to_one_and_masks_block_exactly():
    torch.manual_seed(0)
    attn = MultiHeadAttention(D, 4).eval()
    x = torch.randn(2, 6, D)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, 4:] = True
    _, weights = attn(x, x, x, key_padding_mask=pad, causal=True, need_weights=True)  # (B, H, T, T)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 6))
    future = torch.ones(6, 6, dtype=torch.bool).triu(1)
    assert weights[:, :, future].eq(0).all()
    assert weights[1, :, :, 4:].eq(0).all()
    assert weights[0, :, 5, :].gt(0).all()  # nothing blocked that should not be


def test_fast_path_equals_math_path():
    torch.manual_seed(1)
    attn = MultiHeadAttention(D, 4).eval()
    x, memory = torch.randn(2, 6, D), torch.randn(2, 8, D)
    pad = torch.tensor([[False] * 8, [False] * 5 + [True] * 3])
    for kwargs, key in [({"causal": True}, x), ({"key_padding_mask": pad}, memory),
                        ({"causal": True, "key_padding_mask": pad[:, :6]}, x)]:
        fast, none = attn(x, key, key, need_weights=False, **kwargs)
        slow, weights = attn(x, key, key, need_weights=True, **kwargs)
        assert none is None and weights is not None
        torch.testing.assert_close(fast, slow, atol=1e-6, rtol=1e-5)


def test_cached_self_attention_equals_full():
    torch.manual_seed(2)
    attn = MultiHeadAttention(D, 2).eval()
    x = torch.randn(2, 5, D)
    full, _ = attn(x, x, x, causal=True)
    cache = KVCache()
    steps = [attn(x[:, t:t + 1], x[:, t:t + 1], x[:, t:t + 1], causal=True, cache=cache)[0]
             for t in range(5)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-6, rtol=1e-5)
    assert cache.k.shape == (2, 2, 5, D // 2)


def test_heads_that_do_not_divide_d_model_are_refused():
    with pytest.raises(ValueError, match=r"d_model \(30\).*num_heads \(4\)"):
        MultiHeadAttention(30, 4)


def test_fused_projections_equal_the_readable_path():
    # decoding's FusedAttention (W_Q, W_K, W_V as one matmul) against MultiHeadAttention
    torch.manual_seed(0)
    ours = MultiHeadAttention(D, 4).eval()
    self_fused, cross_fused = FusedAttention(ours, True), FusedAttention(ours, False)
    x, memory = torch.randn(2, 5, D), torch.randn(2, 6, D)
    with torch.no_grad():
        for fused, key, causal in [(self_fused, x, True), (cross_fused, memory, False)]:
            expected, _ = ours(x, key, key, causal=causal)
            torch.testing.assert_close(fused(x, key, key, causal=causal)[0], expected)
            caches = KVCache(static=not causal), KVCache(static=not causal)
            steps = [[attn(x[:, t:t + 1], x[:, t:t + 1] if causal else key,
                           x[:, t:t + 1] if causal else key, causal=causal, cache=cache)[0]
                      for t in range(5)] for attn, cache in zip((ours, fused), caches)]
            torch.testing.assert_close(torch.cat(steps[1], 1), torch.cat(steps[0], 1))
    assert fuse_projections(nn.ModuleDict({"self_attn": ours}))["self_attn"].weight.shape == (
        3 * D, D)


def test_the_recorder_collects_every_modules_weights_and_changes_no_output():
    torch.manual_seed(0)
    model = nn.ModuleDict({"a": MultiHeadAttention(D, 4), "b": MultiHeadAttention(D, 2)}).eval()
    x = torch.randn(2, 5, D)
    with AttentionRecorder(model) as weights:
        out = model["a"](x, x, x, causal=True)[0]
        model["b"](x, x, x)
    assert {name: w.shape for name, w in weights.items()} == {
        "a": (2, 4, 5, 5), "b": (2, 2, 5, 5)}
    torch.testing.assert_close(out, model["a"](x, x, x, causal=True)[0])
    model["a"](x, x, x)  # outside `with`, nothing is recorded
    assert weights["a"][0, 0, 0, 1:].eq(0).all()


@pytest.mark.parametrize("need_weights", [True, False])
def test_without_the_scale_the_logits_are_the_raw_dot_products(need_weights):
    torch.manual_seed(2)
    attn = MultiHeadAttention(D, 4, scaled=False).eval()
    x = torch.randn(2, 5, D)
    out, _ = attn(x, x, x, causal=True, need_weights=need_weights)
    q, k, v = attn.project(x, x, x)  # (B, H, T, Dk) each
    scores = (q @ k.transpose(-2, -1)).masked_fill(torch.ones(5, 5).triu(1).bool(), float("-inf"))
    merged = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, D)  # (B, T, D)
    torch.testing.assert_close(out, attn.w_o(merged), atol=1e-5, rtol=1e-5)
