"""Every attention mask in mha is built here. Convention: True marks a position that is blocked.

Legend: B batch, Tq query length, Tk key length.
"""

from __future__ import annotations

import torch
from torch import Tensor


def padding_mask(ids: Tensor, pad_id: int) -> Tensor:
    """(B, T) token ids -> (B, T) bool, True at padding (torch's key_padding_mask convention)."""
    return ids.eq(pad_id)


def causal_mask(query_len: int, key_len: int, device: torch.device | None = None) -> Tensor:
    """(Tq, Tk) bool, True where a query would see a later key.

    Queries are the last Tq of Tk positions, so with a cache (Tq=1, Tk=t+1) nothing is blocked.
    """
    offset = key_len - query_len
    keep = torch.ones(query_len, key_len, dtype=torch.bool, device=device).tril(diagonal=offset)
    return ~keep


def attention_mask(
    key_padding_mask: Tensor | None, causal: bool, query_len: int, key_len: int,
    device: torch.device | None = None,
) -> Tensor | None:
    """Combine padding and causal masks into one (B or 1, 1, Tq, Tk) bool mask, or None."""
    mask = None
    if key_padding_mask is not None:
        mask = key_padding_mask[:, None, None, :]  # (B, 1, 1, Tk)
    if causal and query_len > 1:
        future = causal_mask(query_len, key_len, device)[None, None]  # (1, 1, Tq, Tk)
        mask = future if mask is None else mask | future
    return mask
