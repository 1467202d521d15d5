"""Translate lines of text: one decoding engine interface and the one batching loop.

An `Engine` turns batches of source ids into output ids: `MhaEngine` (mha's own decoder) and
`CTranslate2Engine` (inference/ct2.py, an exported model) both implement it. Everything around a
batch lives here, once: lines arrive in chunks; inside a chunk, sentences are sorted by length and
decoded `batch_size` at a time (so a batch holds little padding), then put back in input order.
Empty lines skip the engine and come out empty. A chunk's translations are yielded as soon as it
is done, so a pipe that writes one line at a time gets each answer before it writes the next
(cli/stdin.py).

Legend: B batch, S source length.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import torch

from mha.configs.schema import DecodeConfig
from mha.data.tokenizer import Tokenizer
from mha.model.decode import beam_search, greedy
from mha.model.transformer import Transformer

log = logging.getLogger(__name__)

CHUNK_BATCHES = 16  # translate_lines sorts this many batches' worth of lines at a time
UNKNOWN_SHOWN = 20  # a warning about unknown characters names at most this many


class Engine(Protocol):
    """What the batching loop needs from a decoder (scoring a batch and attention may join)."""

    tokenizer: Tokenizer
    max_tokens: int  # longest source, in ids with EOS

    def decode_ids(self, sources: list[list[int]], *, beam: int) -> list[list[int]]:
        """One batch: source ids (each ending in EOS) -> output ids without BOS/EOS."""

    def batch_keys(self, sources: list[list[int]], *, beam: int) -> list[int]:
        """Per source, a key that must be equal within a batch (so a batch may end early)."""

    def score_ids(self, sources: list[list[int]], outputs: list[list[int]]) -> list[float]:
        """One batch: the log-probability (natural log) of each output followed by EOS, given
        its source: the sum over its tokens, as the model scores them teacher-forced."""


class MhaEngine:
    """mha's own decoder: greedy (beam 1, with or without the KV cache) or beam search (whose
    live prefixes and scores `on_step` sees at each step, as in model/decode.py)."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, decode_cfg: DecodeConfig, *,
                 use_cache: bool = True, on_step: Callable | None = None) -> None:
        self.model, self.tokenizer, self.decode_cfg = model, tokenizer, decode_cfg
        self.use_cache, self.on_step, self.max_tokens = use_cache, on_step, model.cfg.max_tokens

    def decode_ids(self, sources: list[list[int]], *, beam: int) -> list[list[int]]:
        model, cfg = self.model, self.decode_cfg
        src_ids = _padded(sources, model.pad_id).to(next(model.parameters()).device)  # (B, S)
        limits = {"bos": Tokenizer.BOS, "eos": Tokenizer.EOS, "max_len_a": cfg.max_len_a,
                  "max_len_b": cfg.max_len_b}
        if beam > 1:
            return beam_search(model, src_ids, beam=beam, length_penalty=cfg.length_penalty,
                               on_step=self.on_step, **limits)
        return greedy(model, src_ids, use_cache=self.use_cache, **limits)

    def batch_keys(self, sources: list[list[int]], *, beam: int) -> list[int]:
        return [0] * len(sources)  # any sentences may share a batch

    @torch.no_grad()
    def score_ids(self, sources: list[list[int]], outputs: list[list[int]]) -> list[float]:
        model, pad = self.model, self.model.pad_id
        device = next(model.parameters()).device
        src_ids = _padded(sources, pad).to(device)  # (B, S)
        tgt_in = _padded([[Tokenizer.BOS, *ids] for ids in outputs], pad).to(device)  # (B, T)
        tgt_out = _padded([[*ids, Tokenizer.EOS] for ids in outputs], pad).to(device)  # (B, T)
        # decoder self-attention is causal: padding after an output changes none of its steps
        log_probs = model(src_ids, tgt_in).float().log_softmax(dim=-1)  # (B, T, V)
        token = log_probs.gather(-1, tgt_out[..., None]).squeeze(-1)  # (B, T)
        return token.masked_fill(tgt_out.eq(pad), 0.0).sum(dim=-1).tolist()


def _padded(rows: list[list[int]], pad: int) -> torch.Tensor:
    """Lists of ids -> (B, longest), padded on the right."""
    ids = torch.full((len(rows), max(map(len, rows))), pad)
    for row, values in enumerate(rows):
        ids[row, :len(values)] = torch.tensor(values)
    return ids


def translate_lines(engine: Engine, lines: Iterable[str], *, batch_size: int,
                    beam: int) -> Iterator[str]:
    """Translate `lines` (one sentence each), yielding one line of text per input line."""
    chunks = chunked(iter(lines), batch_size * CHUNK_BATCHES)
    return translate_chunks(engine, chunks, batch_size=batch_size, beam=beam)


def translate_chunks(engine: Engine, chunks: Iterable[list[str]], *, batch_size: int,
                     beam: int) -> Iterator[str]:
    """Like `translate_lines`, but a chunk's translations come out before the next chunk is read."""
    first_line = 1
    for chunk in chunks:
        yield from translate_chunk(engine, chunk, batch_size=batch_size, beam=beam,
                                   first_line=first_line)
        first_line += len(chunk)


def translate_chunk(engine: Engine, lines: list[str], *, batch_size: int, beam: int,
                    first_line: int = 1) -> list[str]:
    """Translate `lines` in batches formed by length; returns the translations in input order.

    A source longer than the model's positions is cut to max_tokens (max_positions - 1), with a
    warning naming its line (counted from first_line).
    """
    sources = encode_sources(engine.tokenizer, lines, engine.max_tokens, first_line)
    outputs = decode_sources(engine, sources, batch_size=batch_size, beam=beam)
    return [engine.tokenizer.decode_tgt(ids) if ids is not None else "" for ids in outputs]


def decode_sources(engine: Engine, sources: list[list[int]], *, batch_size: int,
                   beam: int) -> list[list[int] | None]:
    """Output ids per source (None for an empty one, which skips the engine), decoded in batches
    of sources of similar length; in input order."""
    order = sorted((i for i, ids in enumerate(sources) if ids), key=lambda i: -len(sources[i]))
    keys = dict(zip(order, engine.batch_keys([sources[i] for i in order], beam=beam)))
    out: list[list[int] | None] = [None] * len(sources)
    batch: list[int] = []
    for i in [*order, None]:  # None: the end, which closes the last batch
        if batch and (i is None or len(batch) == batch_size or keys[i] != keys[batch[0]]):
            for j, ids in zip(batch, engine.decode_ids([sources[j] for j in batch], beam=beam)):
                out[j] = ids
            batch = []
        batch.append(i)
    return out


def encode_sources(
    tokenizer: Tokenizer, lines: list[str], max_tokens: int, first_line: int = 1,
) -> list[list[int]]:
    """Source ids (pieces + EOS) per line, [] for a blank line, cut to max_tokens ending in EOS."""
    texts = [line.strip() for line in lines]
    encoded = iter(tokenizer.encode_src([text for text in texts if text]))
    sources: list[list[int]] = []
    for number, text in enumerate(texts, first_line):
        ids = next(encoded) if text else []
        if len(ids) > max_tokens:
            log.warning("line %d: %d source subwords, more than the model's positions allow; "
                        "translating the first %d", number, len(ids) - 1, max_tokens - 1)
            ids = ids[:max_tokens - 1] + [Tokenizer.EOS]
        sources.append(ids)
    return sources


def warn_unknown_characters(tokenizer: Tokenizer, lines: list[str], where: str) -> Counter[str]:
    """One warning naming the characters of `lines` the tokenizer lacks (each is read as UNK and
    translated as if unknown, shown as "⁇") with their counts; returns them (empty: no warning).

    `where` names the input in the message: "test.de", "stdin lines 3-5", ...
    """
    unknown = tokenizer.unknown_characters(lines)
    if unknown:
        log.warning("%s", unknown_message(unknown, where))
    return unknown


def unknown_message(unknown: Counter[str], where: str) -> str:
    """The warning's text, which `mha serve` also gives its clients: the characters and counts."""
    shown = [f"{char!r} U+{ord(char):04X} x{count}"
             for char, count in unknown.most_common(UNKNOWN_SHOWN)]
    more = len(unknown) - UNKNOWN_SHOWN
    total = sum(unknown.values())
    return (f"{where}: {total} character{'' if total == 1 else 's'} the tokenizer does not know, "
            f"read as unknown (⁇): {', '.join(shown)}{f' and {more} more' if more > 0 else ''}")


def warn_unknown_in_chunks(tokenizer: Tokenizer, chunks: Iterable[list[str]],
                           name: str = "stdin") -> Iterator[list[str]]:
    """Pass chunks of lines through, with one `warn_unknown_characters` line per chunk."""
    first = 1
    for chunk in chunks:
        last = first + len(chunk) - 1
        lines = f"line {first}" if last == first else f"lines {first}-{last}"
        warn_unknown_characters(tokenizer, chunk, f"{name} {lines}")
        first += len(chunk)
        yield chunk


def chunked(items: Iterator, size: int) -> Iterator[list]:
    while chunk := [item for _, item in zip(range(size), items)]:
        yield chunk
