"""Ensembles: several runs (or checkpoints) that share a tokenizer decode as one model, averaging
the members' log-probabilities at each step (as fairseq, OpenNMT-py, Marian and Sockeye do).

`Ensemble` has the face that the decoding loops of model/decode.py use (`encode`, `decode` with a
cache, `logits`, `new_cache`, `pad_id`, `cfg.max_tokens`), so greedy, beam search and any loop
written against a Transformer decode an ensemble unchanged. The members' states travel side by
side in one tensor: `encode` returns their memories concatenated on the last axis, `decode` splits
them back and returns the members' decoder states concatenated the same way. So the loops' row
operations (`memory[live]`, `repeat_interleave` for the beam, `hidden[:, -1]`) act on every member
at once, and the cache holds one DecoderCache per member, reordered together.

`logits` returns the mean of the members' log-probabilities. A loop that takes an argmax (greedy)
picks the ensemble's best token; a loop that applies log_softmax (beam search) renormalises the
mean, which is the members' geometric mean of probabilities (a product of experts).

Legend: B batch, S source length, T target length, M members, D the sum of the members' d_model
(Dm one member's), V vocabulary size.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from mha.configs.schema import Config
from mha.data.tokenizer import Tokenizer
from mha.inference.checkpoint import CheckpointError
from mha.inference.run import load_model
from mha.model.masks import padding_mask
from mha.model.transformer import DecoderCache, Transformer


class EnsembleCache:
    """One DecoderCache per member, reordered together (the loops call `reorder` only)."""

    def __init__(self, caches: list[DecoderCache]) -> None:
        self.members = caches

    @property
    def length(self) -> int:
        return self.members[0].length

    def reorder(self, index: Tensor) -> None:
        for cache in self.members:
            cache.reorder(index)


class Ensemble(nn.Module):
    """Members (Transformers of one vocabulary) that decode as one model. `sources` names each
    member (run folder and checkpoint file) for reports."""

    def __init__(self, members: list[Transformer], sources: list[dict] | None = None) -> None:
        super().__init__()
        if len({m.output.out_features for m in members}) != 1:
            raise ValueError("ensemble members must share one target vocabulary")
        self.members = nn.ModuleList(members)
        self.sources = sources or []
        self.pad_id = members[0].pad_id
        shortest = min(m.cfg.max_positions for m in members)  # every member must fit a sequence
        self.cfg = dataclasses.replace(members[0].cfg, max_positions=shortest)
        self.widths = [m.cfg.d_model for m in members]

    def encode(self, src_ids: Tensor, src_pad_mask: Tensor | None) -> Tensor:
        """src_ids (B, S) -> the members' memories side by side (B, S, D)."""
        return torch.cat([m.encode(src_ids, src_pad_mask) for m in self.members], dim=-1)

    def decode(self, tgt_in: Tensor, memory: Tensor, src_pad_mask: Tensor | None,
               cache: EnsembleCache | None = None) -> Tensor:
        """tgt_in (B, T), memory (B, S, D) -> the members' decoder states side by side
        (B, T, D); with a cache, tgt_in holds only the new steps, as for one Transformer."""
        memories = memory.split(self.widths, dim=-1)  # M x (B, S, Dm)
        caches = cache.members if cache is not None else [None] * len(self.members)
        return torch.cat([m.decode(tgt_in, mem, src_pad_mask, c)
                          for m, mem, c in zip(self.members, memories, caches)], dim=-1)

    def logits(self, hidden: Tensor) -> Tensor:
        """Decoder states (..., D) -> the mean of the members' log-probabilities (..., V)."""
        states = hidden.split(self.widths, dim=-1)  # M x (..., Dm)
        log_probs = [m.logits(h).float().log_softmax(dim=-1) for m, h in zip(self.members, states)]
        return torch.stack(log_probs).mean(dim=0)  # (M, ..., V) -> (..., V)

    def forward(self, src_ids: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced mean log-probabilities (B, T, V) for src_ids (B, S), tgt_in (B, T)."""
        src_pad_mask = padding_mask(src_ids, self.pad_id)
        memory = self.encode(src_ids, src_pad_mask)
        return self.logits(self.decode(tgt_in, memory, src_pad_mask))

    def new_cache(self) -> EnsembleCache:
        return EnsembleCache([m.new_cache() for m in self.members])


def load_ensemble(run_dir: Path, which: str, others: list[str],
                  device: str) -> tuple[Ensemble, Tokenizer, Config]:
    """RUN's model (checkpoint `which`) with each of `others` (a run folder, whose checkpoint
    `which` names when it is best or last, else best.pt; or a checkpoint file), as one Ensemble.
    The config (decode settings included) is RUN's.

    Raises CheckpointError for a missing member or one whose tokenizer differs from RUN's, and
    what load_model raises.
    """
    model, tokenizer, cfg = load_model(run_dir, which, device)
    members, sources = [model], [_described(run_dir, which)]
    for spec in others:
        member_run, member_which = member_source(spec, which)
        member, member_tokenizer, _ = load_model(member_run, member_which, device)
        if member_tokenizer != tokenizer:
            raise CheckpointError(
                f"--ensemble {spec} has a different tokenizer ({member_tokenizer!r}) from "
                f"{run_dir} ({tokenizer!r}): the members of an ensemble must share one")
        members.append(member)
        sources.append(_described(member_run, member_which))
    return Ensemble(members, sources).eval(), tokenizer, cfg


def member_source(spec: str, which: str) -> tuple[Path, str]:
    """`--ensemble SPEC` -> (run folder, checkpoint as load_model takes it)."""
    path = Path(spec)
    if path.is_dir():
        return path, which if which in ("best", "last") else "best"
    if path.is_file():  # RUN/checkpoints/X.pt belongs to RUN, whose files it must agree with
        return (path.parents[1] if path.parent.name == "checkpoints" else path.parent), str(path)
    raise CheckpointError(f"--ensemble {spec}: no such run folder or checkpoint file")


def _described(run_dir: Path, which: str) -> dict:
    path = Path(which) if which not in ("best", "last") else run_dir / "checkpoints" / f"{which}.pt"
    return {"run": str(run_dir), "checkpoint": str(path)}


def ensemble_label(sources: list[dict]) -> str:
    """A file-name part naming the members after the first: "ensemble+seed2+seed3-last"."""
    names = []
    for source in sources[1:]:
        run, path = Path(source["run"]), Path(source["checkpoint"])
        name = run.resolve().name + ("" if path.stem == "best" else f"-{path.stem}")
        names.append(re.sub(r"[^A-Za-z0-9_.-]", "_", name))
    return "+".join(["ensemble", *names])

