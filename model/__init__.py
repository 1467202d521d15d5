"""The network of "Attention Is All You Need", written from scratch, and nothing else.

Read in this order: masks (padding and causal), attention (W_Q, W_K, W_V, W_O, the head split,
the KV cache, a recorder of attention weights), layers (feed-forward, positions, encoder and
decoder layers), transformer (embeddings, `encode`, `decode`, `logits`), decode (greedy and beam
search, from a forced prefix), sample (greedy's choice drawn: top-k, top-p, temperature). On the
side: dropout (16-bit masks on the CPU), fused (W_Q, W_K, W_V as one matmul, for decoding) and
info (parameter and FLOP counts). Imports only torch and mha.configs.
"""

from mha.model.attention import AttentionRecorder, KVCache, MultiHeadAttention
from mha.model.decode import Hypothesis, beam_search, greedy
from mha.model.fused import fuse_projections
from mha.model.layers import DecoderLayer, EncoderLayer, FeedForward, SinusoidalPositions
from mha.model.masks import causal_mask, padding_mask
from mha.model.sample import Sampler, Sampling
from mha.model.transformer import Transformer

__all__ = ["AttentionRecorder", "DecoderLayer", "EncoderLayer", "FeedForward", "Hypothesis",
           "KVCache", "MultiHeadAttention", "Sampler", "Sampling", "SinusoidalPositions",
           "Transformer", "beam_search", "causal_mask", "fuse_projections", "greedy",
           "padding_mask"]
