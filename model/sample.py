"""Sampling the next token (top-k, top-p, temperature): the choice `greedy` makes, drawn at random.

`greedy` (model/decode.py) takes the most probable token at each step; given a `Sampler` as its
`choose`, it draws one instead, batched and KV-cached the same way. With top_k=1 the draw is the
most probable token: greedy again.

Legend: b live rows, V vocabulary size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Sampling:
    """top_k: draw among the k most probable tokens (None: all); top_p: among the fewest most
    probable tokens whose probabilities reach p (nucleus sampling, Holtzman et al. 2020);
    temperature: divides the log-probabilities first (below 1 sharper, above 1 flatter)."""

    top_k: int | None = None
    top_p: float = 1.0
    temperature: float = 1.0
    seed: int = 0


class Sampler:
    """Draws one token per row from softmax(log_probs / temperature), cut to top-k and top-p.
    Its own random generator, seeded once: the same seed and input give the same draws."""

    def __init__(self, sampling: Sampling, device: torch.device | str = "cpu") -> None:
        self.sampling = sampling
        self.generator = torch.Generator(device=device).manual_seed(sampling.seed)

    def __call__(self, log_probs: Tensor) -> Tensor:
        """log_probs (b, V), or logits (the same softmax: they differ by a constant per row)
        -> token ids (b,)."""
        s = self.sampling
        logits = log_probs / s.temperature  # (b, V)
        if s.top_k is not None and s.top_k < logits.shape[-1]:
            kept = logits.topk(s.top_k, dim=-1).indices  # (b, k)
            logits = torch.full_like(logits, float("-inf")).scatter(
                -1, kept, logits.gather(-1, kept))
        if s.top_p < 1.0:
            sorted_logits, order = logits.sort(dim=-1, descending=True)  # (b, V) each
            probs = sorted_logits.softmax(dim=-1)
            before = probs.cumsum(dim=-1) - probs  # probability of the more probable tokens
            sorted_logits = sorted_logits.masked_fill(before >= s.top_p, float("-inf"))
            logits = torch.empty_like(logits).scatter(-1, order, sorted_logits)
        probs = logits.softmax(dim=-1)  # (b, V)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(1)  # (b,)
