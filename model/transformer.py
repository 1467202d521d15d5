"""The encoder-decoder Transformer: embeddings, positions, encoder and decoder stacks, output.

Legend: B batch, S source length, T target length, D d_model, V vocabulary size.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from mha.configs.schema import ModelConfig
from mha.model.attention import KVCache
from mha.model.dropout import Dropout
from mha.model.layers import DecoderLayer, EncoderLayer, LearnedPositions, SinusoidalPositions
from mha.model.masks import padding_mask


class DecoderCache:
    """Per decoder layer: the self-attention cache (grows a step at a time) and the
    encoder-decoder cache (the memory's K and V, projected once). `length` is the steps seen."""

    def __init__(self, num_layers: int) -> None:
        self.layers = [(KVCache(), KVCache(static=True)) for _ in range(num_layers)]
        self.length = 0

    def reorder(self, index: Tensor) -> None:
        for self_cache, cross_cache in self.layers:
            self_cache.reorder(index)
            cross_cache.reorder(index)


class Transformer(nn.Module):
    """Vaswani et al. (2017) with options for pre-norm, GELU, learned positions.

    Initialisation as fairseq and the Annotated Transformer do it: Xavier-uniform weights for
    every projection, zero biases, embeddings N(0, D^-1/2) (they are scaled by sqrt(D) on the way
    in), the padding row zero.
    """

    def __init__(self, cfg: ModelConfig, src_vocab: int, tgt_vocab: int, pad_id: int = 0) -> None:
        super().__init__()
        if cfg.tie_embeddings and src_vocab != tgt_vocab:
            raise ValueError(
                f"tied embeddings need one vocabulary, got {src_vocab} and {tgt_vocab}")
        self.cfg, self.pad_id, self.scale = cfg, pad_id, math.sqrt(cfg.d_model)
        self.src_embed = nn.Embedding(src_vocab, cfg.d_model, padding_idx=pad_id)
        self.tgt_embed = (self.src_embed if cfg.tie_embeddings
                          else nn.Embedding(tgt_vocab, cfg.d_model, padding_idx=pad_id))
        positions = SinusoidalPositions if cfg.positional == "sinusoidal" else LearnedPositions
        self.positions = positions(cfg.max_positions, cfg.d_model)
        self.dropout = Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        pre_norm = cfg.norm == "pre"  # pre-norm stacks end with a LayerNorm of their own
        self.encoder_norm = nn.LayerNorm(cfg.d_model) if pre_norm else nn.Identity()
        self.decoder_norm = nn.LayerNorm(cfg.d_model) if pre_norm else nn.Identity()
        self.output = nn.Linear(cfg.d_model, tgt_vocab, bias=False)
        self._init_weights()
        if cfg.tie_embeddings:
            self.output.weight = self.tgt_embed.weight

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=self.cfg.d_model ** -0.5)
                if module.padding_idx is not None:
                    nn.init.zeros_(module.weight[module.padding_idx])

    def _embed(self, embedding: nn.Embedding, ids: Tensor, offset: int = 0) -> Tensor:
        if offset + ids.shape[1] > self.cfg.max_positions:
            raise ValueError(f"sequence of {offset + ids.shape[1]} tokens is longer than "
                             f"model.max_positions ({self.cfg.max_positions})")
        x = embedding(ids) * self.scale + self.positions(ids.shape[1], offset)  # (B, T, D)
        return self.dropout(x)

    def encode(self, src_ids: Tensor, src_pad_mask: Tensor | None) -> Tensor:
        """src_ids (B, S), src_pad_mask (B, S) True at padding -> memory (B, S, D)."""
        x = self._embed(self.src_embed, src_ids)
        for layer in self.encoder:
            x = layer(x, src_pad_mask)
        return self.encoder_norm(x)

    def decode(
        self, tgt_in: Tensor, memory: Tensor, src_pad_mask: Tensor | None,
        cache: DecoderCache | None = None,
    ) -> Tensor:
        """tgt_in (B, T), memory (B, S, D) -> the decoder's output states (B, T, D); `logits`
        turns them into next-token scores.

        With a cache, tgt_in holds only the new steps; earlier steps' keys and values come from
        the cache.
        """
        offset = cache.length if cache is not None else 0
        x = self._embed(self.tgt_embed, tgt_in, offset)
        for i, layer in enumerate(self.decoder):
            x = layer(x, memory, src_pad_mask, cache.layers[i] if cache is not None else None)
        if cache is not None:
            cache.length += tgt_in.shape[1]
        return self.decoder_norm(x)

    def logits(self, hidden: Tensor) -> Tensor:
        """Decoder states (..., D) -> next-token logits (..., V): the output layer."""
        return self.output(hidden)

    def forward(self, src_ids: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits (B, T, V) for src_ids (B, S) and tgt_in (B, T)."""
        src_pad_mask = padding_mask(src_ids, self.pad_id)
        memory = self.encode(src_ids, src_pad_mask)
        return self.logits(self.decode(tgt_in, memory, src_pad_mask))

    def new_cache(self) -> DecoderCache:
        return DecoderCache(len(self.decoder))
