"""The network of "Attention Is All You Need", written from scratch, and nothing else.

Read in this order: masks (padding and causal), attention (W_Q, W_K, W_V, W_O, the head split,
the KV cache), layers (feed-forward, positions, encoder and decoder layers), transformer
(embeddings, `encode`, `decode`), decode (greedy and beam search); dropout and info (parameter
and FLOP counts) on the side. Imports only torch and mha.configs.
"""

from mha.model.attention import KVCache, MultiHeadAttention
from mha.model.decode import beam_search, greedy
from mha.model.layers import DecoderLayer, EncoderLayer, FeedForward, SinusoidalPositions
from mha.model.masks import causal_mask, padding_mask
from mha.model.transformer import Transformer

__all__ = ["DecoderLayer", "EncoderLayer", "FeedForward", "KVCache", "MultiHeadAttention",
           "SinusoidalPositions", "Transformer", "beam_search", "causal_mask", "greedy",
           "padding_mask"]
