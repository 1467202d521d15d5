"""The training objective: label-smoothed cross-entropy, summed over the real target tokens.

Legend: B batch, S source length, T target length, N real (non-padding) target tokens, V vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mha.data.tokenizer import Tokenizer
from mha.model.masks import padding_mask
from mha.model.transformer import Transformer

CHUNK_ROWS = 128  # rows of bf16 logits taken to fp32 at a time: 128 x 8000 x 4 B = 4 MB, in cache


class RealTokenLogits(nn.Module):
    """The model's logits at the N real (non-padding) target positions only: padding positions
    leave before the output layer, so they cost no logits (about a fifth of a batch's target
    positions are padding). The module training hands to DistributedDataParallel, so the whole
    forward runs through DDP's hooks.
    """

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, src_ids: Tensor, tgt_in: Tensor, real: Tensor) -> Tensor:
        """src_ids (B, S), tgt_in (B, T), real (B, T) bool -> logits (N, V)."""
        src_pad_mask = padding_mask(src_ids, self.model.pad_id)
        memory = self.model.encode(src_ids, src_pad_mask)  # (B, S, D)
        hidden = self.model.decode(tgt_in, memory, src_pad_mask)  # (B, T, D)
        return self.model.logits(hidden[real])  # (N, V)


def summed_loss(net: nn.Module, src_ids: Tensor, tgt_in: Tensor, tgt_out: Tensor,
                label_smoothing: float, pad_id: int = Tokenizer.PAD) -> Tensor:
    """Teacher-forced loss of src_ids (B, S), tgt_in (B, T) against tgt_out (B, T), summed.

    `net` is a Transformer, or a module that gives the (N, V) logits of the real positions from
    (src_ids, tgt_in, real): RealTokenLogits, or DDP wrapping it. Divide by N for the mean;
    training divides the gradients instead, after summing over accumulated batches and processes.
    """
    real = tgt_out.ne(pad_id)  # (B, T)
    logits = (RealTokenLogits(net) if isinstance(net, Transformer) else net)(src_ids, tgt_in, real)
    if logits.dtype != torch.float32 and logits.device.type == "cpu":  # bf16 autocast
        return ChunkedCrossEntropy.apply(logits, tgt_out[real], label_smoothing)
    return F.cross_entropy(logits.float(), tgt_out[real], reduction="sum",
                           label_smoothing=label_smoothing)


class ChunkedCrossEntropy(torch.autograd.Function):
    """F.cross_entropy(logits.float(), target, reduction="sum", label_smoothing=eps) for bf16
    logits (N, V) on the CPU, computed CHUNK_ROWS rows at a time.

    Casting all the logits to fp32 first writes an (N, V) fp32 copy to memory, and the
    log-softmax, the smoothing term and their gradients each pass over it again: on a CPU at
    this project's sizes that cost more than the output layer's matmul. Chunk by chunk, the fp32
    values stay in cache, and the gradient is made in the same pass as the loss (one exp per
    logit). Per row, with lse the log-sum-exp of the row's logits x:

        loss = lse - (1 - eps) x[target] - eps mean(x)
        d loss / d x = softmax(x) - (1 - eps) onehot(target) - eps / V
    """

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, smoothing: float) -> Tensor:
        N, V = logits.shape
        lse, mean = torch.empty(N), torch.empty(N)  # (N,) each, fp32
        grad = torch.empty_like(logits) if ctx.needs_input_grad[0] else None  # (N, V)
        for start in range(0, N, CHUNK_ROWS):
            end = min(start + CHUNK_ROWS, N)
            rows = logits[start:end].to(torch.float32, copy=True)  # (n, V)
            top = rows.amax(dim=1, keepdim=True)  # (n, 1)
            torch.mean(rows, dim=1, out=mean[start:end])
            exps = rows.sub_(top).exp_()  # (n, V)
            total = exps.sum(dim=1, keepdim=True)  # (n, 1)
            lse[start:end] = total.log().add_(top).squeeze(1)
            if grad is not None:
                exps.div_(total).sub_(smoothing / V)  # softmax minus the uniform share
                exps.scatter_add_(1, target[start:end, None],
                                  torch.full((end - start, 1), smoothing - 1.0))
                grad[start:end] = exps
        picked = logits.gather(1, target.unsqueeze(1)).squeeze(1).float()  # (N,)
        ctx.save_for_backward(grad)
        return (lse - (1 - smoothing) * picked - smoothing * mean).sum()

    @staticmethod
    def backward(ctx, grad_loss: Tensor) -> tuple[Tensor, None, None]:
        (grad,) = ctx.saved_tensors
        return grad * grad_loss, None, None
