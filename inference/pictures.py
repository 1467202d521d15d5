"""Attention pictures: every head of every decoder layer as a grid of heatmaps, one sentence.

The sentence is translated first (greedy or beam); then one teacher-forced pass over BOS + output
asks the decoder for its weights. Rows are layers (encoder-decoder attention, then, when asked, the
decoder self-attention), columns are heads; each cell is labelled with the subwords it relates.

Legend: H heads, S source length (EOS included), T target length (BOS + output).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure  # a bare Figure draws with Agg and leaves pyplot alone
from torch import Tensor

from mha.configs.schema import DecodeConfig
from mha.data.files import atomic_write
from mha.data.tokenizer import Tokenizer
from mha.inference.search import Search
from mha.inference.translate import MhaEngine, encode_sources
from mha.model.attention import AttentionRecorder
from mha.model.transformer import Transformer

CELL_INCHES = 0.22  # per token, so labels stay legible whatever the sentence length


@dataclass
class Attention:
    """One sentence, translated and read back in one teacher-forced pass over BOS + output:
    logits (T, V) and, per layer, encoder self-attention (H, S, S), decoder self-attention
    (H, T, T) and encoder-decoder attention (H, T, S)."""

    translation: str
    src_pieces: list[str]  # S labels: source subwords and EOS
    tgt_in_pieces: list[str]  # T labels: BOS and the output, what the decoder reads
    tgt_out_pieces: list[str]  # T labels: the output and EOS, what it predicts
    logits: Tensor
    encoder: list[Tensor]
    self: list[Tensor]
    cross: list[Tensor]


@torch.no_grad()
def attention_weights(
    model: Transformer, tokenizer: Tokenizer, text: str, decode_cfg: DecodeConfig, beam: int = 1,
    on_step: Callable[[Tensor, Tensor], None] | None = None,
) -> Attention:
    """Translate `text` (greedy, or beam search, whose live prefixes `on_step` sees), then run
    the model over the source and BOS + output, recording every attention weight; shared by the
    pictures and `mha explore`."""
    source = encode_sources(tokenizer, [text], model.cfg.max_tokens)[0] or [Tokenizer.EOS]
    engine = MhaEngine(model, tokenizer, decode_cfg, on_step=on_step)
    output = engine.decode([source], Search(beam=beam))[0][0].ids
    device = next(model.parameters()).device
    src_ids = torch.tensor([source], device=device)  # (1, S)
    tgt_in = torch.tensor([[Tokenizer.BOS, *output]], device=device)  # (1, T)
    with AttentionRecorder(model) as recorded:
        logits = model(src_ids, tgt_in)  # (1, T, V)
    weights = {name: w[0].cpu() for name, w in recorded.items()}  # each (H, Tq, Tk)
    return Attention(
        tokenizer.decode_tgt(output), src_labels(tokenizer, text, len(source)),
        tokenizer.tgt_pieces([Tokenizer.BOS, *output]),
        tokenizer.tgt_pieces([*output, Tokenizer.EOS]), logits[0],
        [weights[f"encoder.{i}.self_attn"] for i in range(len(model.encoder))],
        *([weights[f"decoder.{i}.{kind}"] for i in range(len(model.decoder))]
          for kind in ("self_attn", "cross_attn")))


def plot_attention(attention: Attention, path: Path | None = None, *,
                   self_attention: bool = False) -> Figure:
    """Draw the grid (rows: layers, columns: heads); given a path, write a PNG there atomically."""
    panels = [("enc-dec", weights, attention.src_pieces) for weights in attention.cross]
    if self_attention:
        panels += [("self", weights, attention.tgt_in_pieces) for weights in attention.self]
    rows, heads = len(panels), panels[0][1].shape[0]
    T, S = len(attention.tgt_out_pieces), len(attention.src_pieces)
    width = heads * (CELL_INCHES * max(S, T) + 1.2)
    height = rows * (CELL_INCHES * T + 1.4) + 0.6
    figure = Figure(figsize=(width, height), layout="constrained")
    axes = figure.subplots(rows, heads, squeeze=False)
    layers = len(attention.cross)
    for row, (kind, weights, key_labels) in enumerate(panels):
        for head in range(heads):
            ax = axes[row][head]
            image = ax.imshow(weights[head].numpy(), vmin=0.0, vmax=1.0, cmap="viridis",
                              aspect="equal")
            ax.set_title(f"layer {row % layers + 1} {kind}, head {head + 1}", fontsize=8)
            ax.set_xticks(range(len(key_labels)), key_labels, rotation=90, fontsize=7)
            ax.set_yticks(range(T), attention.tgt_out_pieces if head == 0 else [], fontsize=7)
    figure.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
    figure.suptitle(attention.translation, fontsize=9)
    if path is not None:
        atomic_write(Path(path), lambda file: figure.savefig(file, format="png", dpi=100))
    return figure


def src_labels(tokenizer: Tokenizer, text: str, length: int) -> list[str]:
    """The source's subwords and EOS, cut like the source was when it was too long."""
    pieces = tokenizer.src_pieces(text.strip())
    return pieces if len(pieces) <= length else pieces[:length - 1] + pieces[-1:]
