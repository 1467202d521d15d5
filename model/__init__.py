"""The transformer, written from scratch: `from mha.model import MultiHeadAttention, Transformer`."""

from mha.model.attention import MultiHeadAttention
from mha.model.transformer import Transformer

__all__ = ["MultiHeadAttention", "Transformer"]
