"""Greedy decoding for speed: a static KV cache and one decoder step that `torch.compile` can
turn into a few fused kernels. model/decode.py's `greedy` is the readable reference; this file
gives the same hypotheses (tests/test_fast_decode.py) and is switched on by the code that wants
it (inference/fast_decode.py decides when compiling pays).

What differs from `greedy`:
- The self-attention cache is preallocated, (B, H, T, Dk) per layer for T = one past the batch's
  longest output, and each step writes each row's K and V in place at that row's position `pos`
  (a tensor, so one compiled step serves every position, and rows may be at different positions:
  model/stream_decode.py lets sentences join a running batch); attention reads the slots up to the
  furthest position written (the step's T), those a row has not yet written masked. A finished
  row stays where it ended, writing padding one past its last token (the spare slot) until it
  leaves.
- Encoder-decoder attention's K and V come from one matmul of the memory per layer (W_K and
  W_V stacked), once per batch.
- The step ends at the chosen token: argmax of the logits, and its log-probability as its logit
  minus their logsumexp, never a log_softmax over the whole vocabulary.
- Finished rows stay in the batch, masked (they feed padding and add nothing), until a quarter or
  more of the batch has finished: then the cache keeps only the live rows.

Legend: B batch, S source length, T output length (the cache's), D d_model, H heads,
Dk = D // H, L decoder layers, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from mha.model.decode import Hypothesis, _strip, chosen_log_probs, length_limits
from mha.model.masks import padding_mask
from mha.model.transformer import Transformer


@dataclass
class StaticState:
    """Everything a step reads and writes, one row per sentence still in the batch."""

    self_k: list[Tensor]  # per layer (B, H, T, Dk), written at `pos` each step: one tensor
    self_v: list[Tensor]  # each, as a slice of a bigger one would be copied whole
    cross_kv: Tensor  # (L, 2, B, H, S, Dk): the memory's K and V, projected once
    src_keep: Tensor  # (B, 1, 1, S) True at real source tokens
    tokens: Tensor  # (B,) the last chosen token (BOS at first)
    log_prob: Tensor  # (B,) summed log-probability of the chosen tokens
    length: Tensor  # (B,) tokens chosen so far, EOS included
    done: Tensor  # (B,) bool: ended (EOS or its length limit)
    limits: Tensor  # (B,) most tokens
    pos: Tensor  # (B,) where each row writes this step: its tokens so far, stopped once done
    out: Tensor  # (B, T) the chosen tokens
    rows: Tensor  # (B,) each row's sentence in the input batch

    def select(self, index: Tensor) -> StaticState:
        """Keep rows `index`."""
        def keep(name: str, value: Tensor | list[Tensor]) -> Tensor | list[Tensor]:
            if isinstance(value, list):
                return [t[index] for t in value]
            return value[:, :, index] if name == "cross_kv" else value[index]

        return StaticState(*(keep(f.name, getattr(self, f.name)) for f in fields(self)))


class StaticGreedy:
    """Greedy decoding of `model` (in eval mode) with a static KV cache; `compile` wraps the
    step (and the encoder) as it likes, e.g. torch.compile; identity: eager."""

    def __init__(self, model: Transformer,
                 compile: Callable[[Callable], Callable] = lambda f: f) -> None:
        self.model = model
        layers = model.decoder
        with torch.no_grad():  # (3D, D) and (3D,) per layer; cross: (2D, D) and (2D,)
            self.qkv = [_stacked(layer.self_attn, ("w_q", "w_k", "w_v")) for layer in layers]
            self.cross_kv = [_stacked(layer.cross_attn, ("w_k", "w_v")) for layer in layers]
            self.positions = model.positions(model.cfg.max_positions, 0)  # (P, D)
        self.step = compile(self._step)
        self.encode = compile(self._encode)
        self.steps = 0  # decoder steps run, for benchmarks

    def _encode(self, src_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """src_ids (B, S) -> memory's K and V for every layer, (L, 2, B, H, S, Dk) as one
        tensor, and src_keep (B, 1, 1, S)."""
        model = self.model
        src_pad_mask = padding_mask(src_ids, model.pad_id)  # (B, S)
        memory = model.encode(src_ids, src_pad_mask)  # (B, S, D)
        B, S, _ = memory.shape
        attention = model.decoder[0].cross_attn
        H, Dk = attention.num_heads, attention.d_k
        kv = torch.cat([F.linear(memory, weight, bias) for weight, bias in self.cross_kv],
                       dim=-1)  # (B, S, L * 2D)
        kv = kv.view(B, S, len(model.decoder), 2, H, Dk).permute(2, 3, 0, 4, 1, 5)
        return kv.contiguous(), ~src_pad_mask[:, None, None, :], src_pad_mask  # (L, 2, B, H, S, Dk)

    def _step(self, state: StaticState, eos: int, T: int) -> None:
        """One token for every row, at its position state.pos, attending to the cache's first T
        slots (T: one past the furthest position a row writes, at least 2, so that torch.compile
        needs no graph of its own for a first step); updates `state` in place."""
        model, pos = self.model, state.pos
        x = model.tgt_embed(state.tokens) * model.scale + self.positions[pos]  # (B, D)
        x = x[:, None]  # (B, 1, D)
        seen = torch.arange(T, device=pos.device) <= pos[:, None]  # (B, T)
        seen = seen[:, None, None]  # (B, 1, 1, T)
        for i, layer in enumerate(model.decoder):
            x = layer.self_block(x, lambda h, i=i: self._self_attention(i, h, state, pos, seen))
            x = layer.cross_block(x, lambda h, i=i: self._cross_attention(i, h, state))
            x = layer.ff_block(x, layer.feed_forward)
        logits = model.logits(model.decoder_norm(x[:, 0])).float()  # (B, V)
        chosen = logits.argmax(dim=-1)  # (B,)
        live = ~state.done
        state.log_prob.add_(torch.where(live, chosen_log_probs(logits, chosen), 0.0))
        state.length.add_(live.long())
        state.tokens.copy_(torch.where(live, chosen, model.pad_id))
        state.out.scatter_(1, pos[:, None], state.tokens[:, None])  # (B, T)
        state.done.copy_(state.done | chosen.eq(eos) | (state.limits <= pos + 1))
        pos.add_(live.long())

    def _self_attention(self, i: int, h: Tensor, state: StaticState, pos: Tensor,
                        seen: Tensor) -> Tensor:
        attention = self.model.decoder[i].self_attn
        B, H, Dk = h.shape[0], attention.num_heads, attention.d_k
        qkv = F.linear(h, *self.qkv[i])  # (B, 1, 3D)
        q, k, v = qkv.view(B, 1, 3, H, Dk).permute(2, 0, 3, 1, 4)  # (B, H, 1, Dk) each
        rows = torch.arange(B, device=pos.device)
        state.self_k[i][rows, :, pos] = k[:, :, 0]  # (B, H, Dk) into (B, H, T, Dk)
        state.self_v[i][rows, :, pos] = v[:, :, 0]
        T = seen.shape[-1]  # the slots read: (B, H, T, Dk)
        return self._attend(attention, q, state.self_k[i][:, :, :T], state.self_v[i][:, :, :T],
                            seen)

    def _cross_attention(self, i: int, h: Tensor, state: StaticState) -> Tensor:
        attention = self.model.decoder[i].cross_attn
        B, H, Dk = h.shape[0], attention.num_heads, attention.d_k
        q = attention.w_q(h).view(B, 1, H, Dk).transpose(1, 2)  # (B, H, 1, Dk)
        return self._attend(attention, q, state.cross_kv[i, 0], state.cross_kv[i, 1],
                            state.src_keep)

    def _attend(self, attention, q: Tensor, k: Tensor, v: Tensor, keep: Tensor) -> Tensor:
        """softmax(q k^T * scale) v over the keys `keep` allows, heads merged, then W_O:
        q (B, H, 1, Dk), k and v (B, H, Tk, Dk) -> (B, 1, D)."""
        scores = (q @ k.transpose(-2, -1)) * attention.scale  # (B, H, 1, Tk)
        weights = scores.masked_fill(~keep, float("-inf")).softmax(dim=-1)
        context = weights @ v  # (B, H, 1, Dk)
        B, H, _, Dk = context.shape
        return attention.w_o(context.transpose(1, 2).reshape(B, 1, H * Dk))  # (B, 1, D)

    @torch.inference_mode()
    def __call__(self, src_ids: Tensor, *, bos: int, eos: int, max_len_a: float = 1.5,
                 max_len_b: int = 10, length_penalty: float = 1.0) -> list[Hypothesis]:
        """src_ids (B, S) -> B hypotheses, as model/decode.py's `greedy` gives them.

        A source of one token is padded to two (a column of padding) and the cache holds at least
        two steps: torch.compile would give those sizes of 1 graphs of their own. A batch of one
        sentence is not padded: it has a graph of its own (compiled once), a step 13-30% faster
        than a batch padded to two rows (measured, one thread)."""
        model, wanted = self.model, src_ids.shape[0]
        if src_ids.shape[1] == 1:
            src_ids = F.pad(src_ids, (0, 1), value=model.pad_id)  # (B, 2)
        # (B, S >= 2), made here under inference_mode whatever came in: a tensor made outside it
        # has other dispatch keys, which would compile a graph of their own
        src_ids = src_ids.clone()
        state = start_state(model, *self.encode(src_ids), bos=bos, max_len_a=max_len_a,
                            max_len_b=max_len_b)
        outputs: list[Hypothesis] = [Hypothesis(0.0, 0.0, [])] * src_ids.shape[0]
        for step in range(int(state.limits.max())):
            self.step(state, eos, max(step + 1, 2))  # 2 at first: no graph for 1 slot
            self.steps += 1
            finished = int(state.done.sum())
            if finished == 0:
                continue
            if finished < len(state.done) and (4 * finished < len(state.done)
                                                or len(state.done) - finished < 2):
                continue  # compacting costs copies, and a batch of 1 a compilation of its own
            self._finish(state, state.done, outputs, eos, length_penalty)
            live = (~state.done).nonzero().squeeze(1)
            if live.numel() == 0:
                break
            state = state.select(live)
        return outputs[:wanted]

    def _finish(self, state: StaticState, done: Tensor, outputs: list[Hypothesis], eos: int,
                length_penalty: float) -> None:
        for row, ids, total, length in zip(state.rows[done].tolist(), state.out[done].tolist(),
                                           state.log_prob[done].tolist(),
                                           state.length[done].tolist()):
            outputs[row] = Hypothesis(total / length ** length_penalty, total,
                                      _strip(ids, eos, self.model.pad_id))


def start_state(model: Transformer, kv: Tensor, src_keep: Tensor, src_pad_mask: Tensor, *,
                bos: int, max_len_a: float, max_len_b: int) -> StaticState:
    """The state before the first step of the sentences `StaticGreedy.encode` gave kv, src_keep
    and src_pad_mask (B, S) for: each at position 0 with BOS, an empty cache of one slot past the
    longest length limit."""
    limits = length_limits(src_pad_mask, max_len_a, max_len_b, model.cfg.max_tokens)  # (B,)
    T = max(int(limits.max()), 1) + 1  # the spare slot: finished rows write there
    L, _, B, H, _, Dk = kv.shape
    device = kv.device

    def zeros(dtype: torch.dtype = torch.long) -> Tensor:
        return torch.zeros(B, dtype=dtype, device=device)

    return StaticState(
        self_k=[kv.new_zeros(B, H, T, Dk) for _ in range(L)],
        self_v=[kv.new_zeros(B, H, T, Dk) for _ in range(L)],
        cross_kv=kv, src_keep=src_keep, tokens=torch.full((B,), bos, device=device),
        log_prob=zeros(torch.float), length=zeros(), done=zeros(torch.bool), limits=limits,
        pos=zeros(), out=torch.full((B, T), model.pad_id, device=device),
        rows=torch.arange(B, device=device))


def _stacked(attention, names: tuple[str, ...]) -> tuple[Tensor, Tensor]:
    """The weights and biases of `names` (W_Q, W_K, W_V) stacked for one matmul: those that
    mha.model.fused's FusedAttention holds (int8 there, if quantized), else stacked here."""
    if getattr(attention, "weight", None) is not None:
        return attention.weight, attention.bias
    return (torch.cat([getattr(attention, name).weight for name in names]),
            torch.cat([getattr(attention, name).bias for name in names]))
