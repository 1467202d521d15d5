"""Dropout (Srivastava et al., 2014): in training, zero each element with probability p and scale
the rest by 1 / (1 - p), so the expected value is unchanged; in evaluation, do nothing.

PyTorch's CPU dropout draws one random number per element, serially: here about 12 ns an
element, a fifth of a training step on this project's 2-core machine.
Here one 64-bit draw decides four elements, 16 bits each, so p is rounded to a multiple of 2^-16
(0.1 becomes 0.100006) and the scale uses that rounded p. Same generator, so `torch.manual_seed`
and the RNG state saved in checkpoints still decide every mask. Other devices use F.dropout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LEVELS = 1 << 16  # a 16-bit random integer takes this many values


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    if not training or p == 0.0:
        return x
    dropped = round(p * LEVELS)  # of the LEVELS values, this many drop an element
    if x.device.type != "cpu" or dropped >= LEVELS:  # p within 2^-17 of 1 or above: F.dropout
        return F.dropout(x, p, training)
    n = (x.numel() + 3) // 4
    if torch.compiler.is_compiling():  # random_ does not trace: randint makes the same draw
        # with its top bit flipped, and the xor flips it back (training/compiled.py)
        draws = torch.randint(-(1 << 63), (1 << 63) - 1, (n,)) ^ (-(1 << 63))
    else:
        draws = torch.empty(n, dtype=torch.int64).random_(-(1 << 63), None)
    bits = draws.view(torch.int16)[:x.numel()].view_as(x)  # uniform in [-2^15, 2^15)
    keep = bits >= dropped - LEVELS // 2
    return x * keep * (LEVELS / (LEVELS - dropped))


class Dropout(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
