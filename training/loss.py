"""The training objective: label-smoothed cross-entropy, summed over the real target tokens.

Legend: B batch, S source length, T target length, N real (non-padding) target tokens, V vocabulary.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mha.data.tokenizer import Tokenizer


def summed_loss(net: nn.Module, src_ids: Tensor, tgt_in: Tensor, tgt_out: Tensor,
                label_smoothing: float, pad_id: int = Tokenizer.PAD) -> Tensor:
    """Teacher-forced loss of src_ids (B, S), tgt_in (B, T) against tgt_out (B, T), summed.

    Only the N real target positions reach the output layer: padding costs no logits.
    Divide by N for the mean; training divides the gradients instead, after summing over
    accumulated batches and processes.
    """
    real = tgt_out.ne(pad_id)  # (B, T)
    logits = net(src_ids, tgt_in, predict=real)  # (N, V)
    return F.cross_entropy(logits.float(), tgt_out[real], reduction="sum",
                           label_smoothing=label_smoothing)
