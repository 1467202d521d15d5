"""Validation: label-smoothed loss under teacher forcing and greedy sacreBLEU on the val split."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from mha.configs.schema import Config
from mha.data.batching import collate
from mha.data.prepare import Prepared
from mha.inference.evaluate import score
from mha.inference.translate import MhaEngine, translate_lines
from mha.model.transformer import Transformer
from mha.training.ema import EMA
from mha.training.loss import summed_loss


@dataclass(frozen=True)
class Validation:
    loss: float  # per target token, label-smoothed like the training loss
    bleu: float  # sacreBLEU, cased, detokenized, greedy decoding


@torch.no_grad()
def validate(model: Transformer, prepared: Prepared, cfg: Config, device: torch.device,
             autocast: contextlib.AbstractContextManager | None = None) -> Validation:
    model.eval()
    autocast = autocast or contextlib.nullcontext()
    rows = prepared.splits["val"]
    src_ids, tgt_ids = rows["src_ids"], rows["tgt_ids"]
    limit = cfg.model.max_tokens
    order = sorted(range(len(src_ids)), key=lambda i: len(src_ids[i]))  # little padding
    loss_sum, tokens = 0.0, 0
    for start in range(0, len(order), cfg.decode.batch_size):
        indices = order[start:start + cfg.decode.batch_size]
        batch = collate([src_ids[i][:limit] for i in indices],
                        [tgt_ids[i][:limit + 1] for i in indices])
        src, tgt_in, tgt_out = (x.to(device) for x in (batch.src_ids, batch.tgt_in, batch.tgt_out))
        with autocast:
            loss_sum += summed_loss(model, src, tgt_in, tgt_out, cfg.train.label_smoothing).item()
        tokens += batch.tgt_tokens
    with autocast:
        engine = MhaEngine(model, prepared.tokenizer, cfg.decode)
        hypotheses = list(translate_lines(engine, rows["src"], batch_size=cfg.decode.batch_size,
                                          beam=1))
    return Validation(loss_sum / max(tokens, 1), score(hypotheses, list(rows["tgt"]))["bleu"])


def validate_scored(model: Transformer, ema: EMA | None, prepared: Prepared, cfg: Config,
                    device: torch.device, autocast: contextlib.AbstractContextManager,
                    ) -> tuple[Validation, dict, dict]:
    """Validate the weights that count (the moving average when on) and the raw ones beside
    them. Returns the counted Validation, the metrics to log, and what best.pt holds besides
    the state (with EMA on, the average in place of the raw weights, marked "weights": "ema")."""
    result = validate(ema.model if ema else model, prepared, cfg, device, autocast)
    scores, best = {"val_loss": result.loss, "val_bleu": result.bleu}, {"val_bleu": result.bleu}
    if ema is not None:
        raw = validate(model, prepared, cfg, device, autocast)
        scores |= {"raw_val_loss": raw.loss, "raw_val_bleu": raw.bleu}
        best |= {"model": ema.model.state_dict(), "weights": "ema"}
    return result, scores, best
