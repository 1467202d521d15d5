"""Translate lines of text: one output line per input line, in input order.

Lines arrive in chunks. Inside a chunk, sentences are sorted by length and decoded `batch_size`
at a time (so a batch holds little padding), then put back in input order. Empty lines skip the
model and come out empty. A chunk's translations are yielded as soon as it is done, so a pipe
that writes one line at a time gets each answer before it writes the next (cli/stdin.py).

Legend: B batch, S source length.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator

import torch

from mha.configs.schema import DecodeConfig
from mha.data.tokenizer import Tokenizer
from mha.model.decode import beam_search, greedy
from mha.model.transformer import Transformer

log = logging.getLogger(__name__)

CHUNK_BATCHES = 16  # translate_lines sorts this many batches' worth of lines at a time
UNKNOWN_SHOWN = 20  # a warning about unknown characters names at most this many


def translate_lines(
    model: Transformer, tokenizer: Tokenizer, lines: Iterable[str], *, batch_size: int,
    beam: int, use_cache: bool, decode_cfg: DecodeConfig,
) -> Iterator[str]:
    """Translate `lines` (one sentence each), yielding one line of text per input line."""
    chunks = chunked(iter(lines), batch_size * CHUNK_BATCHES)
    return translate_chunks(model, tokenizer, chunks, batch_size=batch_size, beam=beam,
                            use_cache=use_cache, decode_cfg=decode_cfg)


def translate_chunks(
    model: Transformer, tokenizer: Tokenizer, chunks: Iterable[list[str]], *, batch_size: int,
    beam: int, use_cache: bool, decode_cfg: DecodeConfig,
) -> Iterator[str]:
    """Like `translate_lines`, but a chunk's translations come out before the next chunk is read."""
    first_line = 1
    for chunk in chunks:
        yield from translate_chunk(model, tokenizer, chunk, batch_size=batch_size, beam=beam,
                                   use_cache=use_cache, decode_cfg=decode_cfg,
                                   first_line=first_line)
        first_line += len(chunk)


def translate_chunk(
    model: Transformer, tokenizer: Tokenizer, lines: list[str], *, batch_size: int, beam: int,
    use_cache: bool, decode_cfg: DecodeConfig, first_line: int = 1,
) -> list[str]:
    """Translate `lines` in batches formed by length; returns the translations in input order.

    A source longer than the model's positions is cut to model.max_tokens (max_positions - 1),
    with a warning naming its line (counted from first_line).
    """
    sources = encode_sources(tokenizer, lines, model.cfg.max_tokens, first_line)
    order = sorted((i for i, ids in enumerate(sources) if ids), key=lambda i: -len(sources[i]))
    out = [""] * len(lines)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        outputs = decode_ids(model, [sources[i] for i in batch], beam=beam, use_cache=use_cache,
                             decode_cfg=decode_cfg)
        for i, ids in zip(batch, outputs):
            out[i] = tokenizer.decode_tgt(ids)
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


def decode_ids(
    model: Transformer, sources: list[list[int]], *, beam: int, use_cache: bool,
    decode_cfg: DecodeConfig,
) -> list[list[int]]:
    """Greedy (beam 1) or beam search over one padded batch; returns output ids without EOS."""
    device = next(model.parameters()).device
    src_ids = torch.full((len(sources), max(map(len, sources))), model.pad_id, dtype=torch.long)
    for row, ids in enumerate(sources):
        src_ids[row, :len(ids)] = torch.tensor(ids)  # (B, S), padded on the right
    limits = {"max_len_a": decode_cfg.max_len_a, "max_len_b": decode_cfg.max_len_b}
    src_ids = src_ids.to(device)
    if beam > 1:
        return beam_search(model, src_ids, beam=beam, bos=Tokenizer.BOS, eos=Tokenizer.EOS,
                           length_penalty=decode_cfg.length_penalty, **limits)
    return greedy(model, src_ids, bos=Tokenizer.BOS, eos=Tokenizer.EOS, use_cache=use_cache,
                  **limits)


def warn_unknown_characters(tokenizer: Tokenizer, lines: list[str], where: str) -> Counter[str]:
    """One warning naming the characters of `lines` the tokenizer lacks (each is read as UNK and
    translated as if unknown, shown as "⁇") with their counts; returns them (empty: no warning).

    `where` names the input in the message: "test.de", "stdin lines 3-5", ...
    """
    unknown = tokenizer.unknown_characters(lines)
    if unknown:
        shown = [f"{char!r} U+{ord(char):04X} x{count}"
                 for char, count in unknown.most_common(UNKNOWN_SHOWN)]
        more = len(unknown) - UNKNOWN_SHOWN
        total = sum(unknown.values())
        log.warning("%s: %d character%s the tokenizer does not know, read as unknown (⁇): %s%s",
                    where, total, "" if total == 1 else "s", ", ".join(shown),
                    f" and {more} more" if more > 0 else "")
    return unknown


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
