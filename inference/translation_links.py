"""`--alignments`: Pharaoh word links for each translation (every n-best hypothesis), read from
one teacher-forced pass over the model's own output (BOS + its pieces + EOS), with
`AttentionRecorder` on one decoder layer's encoder-decoder attention, its heads averaged, as
inference/word_align.py reads it (`shift`: Shift-Att). The layer: `--align-layer`, else
`default_layer` (the best one `mha align` stored in the run, else the second-to-last).

Legend: B batch, H heads, T target pieces, S source pieces (T + 1 rows: BOS + pieces; S + 1
columns: pieces + EOS).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mha.configs.schema import ConfigError
from mha.data.batching import collate
from mha.data.tokenizer import Tokenizer
from mha.inference.search import Translation
from mha.inference.word_align import links
from mha.model.attention import AttentionRecorder
from mha.model.transformer import Transformer


def check_layer(layer: int, layers: int) -> None:
    """ConfigError for a decoder layer the model lacks."""
    if not 0 <= layer < layers:
        raise ConfigError(f"--align-layer must be a decoder layer, 0 to {layers - 1}, got {layer}")


@dataclass(frozen=True)
class Aligner:
    """Fills `Translation.links` for a chunk of translations, `batch_size` hypotheses a pass."""

    model: Transformer
    tokenizer: Tokenizer
    layer: int
    shift: bool = False
    batch_size: int = 32

    @torch.no_grad()
    def __call__(self, lines: list[str], sources: list[list[int]],
                 translations: list[Translation]) -> None:
        """`lines`: the source texts; `sources`: their ids (pieces + EOS, [] for a blank line)."""
        pairs = [(source, h.ids, self.tokenizer.src_pieces(line.strip())[:len(source) - 1])
                 for line, source, t in zip(lines, sources, translations) for h in t.hypotheses]
        found = [[] for _ in pairs]
        order = sorted(range(len(pairs)), key=lambda i: (len(pairs[i][0]), len(pairs[i][1])))
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            for i, cross in zip(batch, self.cross_attention([pairs[i][:2] for i in batch])):
                _, ids, src_pieces = pairs[i]
                found[i] = links(cross, src_pieces, self.tokenizer.tgt_pieces(ids),
                                 shift=self.shift)
        found_iter = iter(found)
        for translation in translations:
            translation.links = [next(found_iter) for _ in translation.hypotheses]

    def cross_attention(self, pairs: list[tuple[list[int], list[int]]]) -> list[torch.Tensor]:
        """(source ids, output ids) pairs -> per pair, the layer's (H, T + 1, S + 1) weights."""
        device = self.model.output.weight.device
        batch = collate([s for s, _ in pairs], [[Tokenizer.BOS, *ids, Tokenizer.EOS]
                                                for _, ids in pairs], self.model.pad_id)
        with AttentionRecorder(self.model) as recorded:
            self.model(batch.src_ids.to(device), batch.tgt_in.to(device))
        weights = recorded[f"decoder.{self.layer}.cross_attn"]  # (B, H, T + 1, S + 1), padded
        return [weights[row, :, :len(ids) + 1, :len(source)].float().cpu()
                for row, (source, ids) in enumerate(pairs)]
