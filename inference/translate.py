"""Translate lines of text: one decoding engine interface and the one batching loop.

An `Engine` turns batches of source ids into hypotheses, and scores given targets: `MhaEngine`
(mha's own decoder) and `CTranslate2Engine` (inference/ct2.py, an exported model) both implement
it; a `Search` says how: beam size, hypotheses kept (n-best), or sampling. Everything around a
batch lives here, once: lines arrive in chunks; inside a chunk, sentences are sorted by length and
decoded `batch_size` at a time (so a batch holds little padding), then put back in input order.
Empty lines skip the engine and come out empty. A chunk's translations are yielded as soon as it
is done, so a pipe that writes one line at a time gets each answer before it writes the next
(cli/stdin.py). Search, Translation and forced prefixes: inference/search.py.

Legend: B batch, S source length, T target length, N real target tokens in a batch, V vocabulary.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import torch

from mha.configs.schema import DecodeConfig
from mha.data.batching import collate
from mha.data.tokenizer import Tokenizer
from mha.inference.fast_decode import CompiledGreedy, fast_path_allows
from mha.inference.search import Search, Translation, encode_prefixes, split_prefixes
from mha.model.decode import Hypothesis, beam_search, greedy, most_probable
from mha.model.masks import padding_mask
from mha.model.sample import Sampler
from mha.model.static_decode import StaticGreedy
from mha.model.transformer import Transformer

log = logging.getLogger(__name__)

CHUNK_BATCHES = 16  # translate_lines sorts this many batches' worth of lines at a time
UNKNOWN_SHOWN = 20  # a warning about unknown characters names at most this many


class Engine(Protocol):
    """What the batching loop needs from a decoder."""

    tokenizer: Tokenizer
    max_tokens: int  # longest source, in ids with EOS
    compile_seconds: float  # spent compiling (once, on the first batch that needed it)

    def decode(self, sources: list[list[int]], search: Search,
               prefixes: list[list[int]] | None = None) -> list[list[Hypothesis]]:
        """One batch: source ids (each ending in EOS) and forced target prefixes (ids, [] for
        none) -> per source, its `search.nbest` hypotheses, best first."""

    def score(self, sources: list[list[int]], targets: list[list[int]]) -> list[list[float]]:
        """One batch, teacher-forced: each target token's log-probability (targets: ids ending
        in EOS, without BOS)."""


class MhaEngine:
    """mha's own decoder: greedy (with or without the KV cache), sampling or beam search (whose
    live prefixes and scores `on_step` sees at each step, as in model/decode.py). With
    `compile`, plain greedy runs compiled (inference/fast_decode.py), compiled on its first
    batch; `compile_seconds` then says how long that took."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, decode_cfg: DecodeConfig, *,
                 use_cache: bool = True, on_step: Callable | None = None,
                 compile: bool = False) -> None:
        self.model, self.tokenizer, self.decode_cfg = model, tokenizer, decode_cfg
        self.use_cache, self.on_step, self.max_tokens = use_cache, on_step, model.cfg.max_tokens
        self.sampler: Sampler | None = None  # seeded once, on the first batch that samples
        self.compile, self.fast = compile, None

    @property
    def compile_seconds(self) -> float:
        return self.fast.compile_seconds if self.fast is not None else 0.0

    def decode(self, sources: list[list[int]], search: Search,
               prefixes: list[list[int]] | None = None) -> list[list[Hypothesis]]:
        model, cfg = self.model, self.decode_cfg
        device = next(model.parameters()).device
        src_ids = _padded(sources, model.pad_id).to(device)  # (B, S)
        forced = _padded(prefixes, -1).to(device) if prefixes and any(prefixes) else None  # (B, P)
        options = {"bos": Tokenizer.BOS, "eos": Tokenizer.EOS, "max_len_a": cfg.max_len_a,
                   "max_len_b": cfg.max_len_b, "length_penalty": cfg.length_penalty,
                   "prefixes": forced}
        if search.beam > 1:
            return beam_search(model, src_ids, beam=search.beam, nbest=search.nbest,
                               on_step=self.on_step, **options)
        if self._fast(search, forced) is not None:
            del options["prefixes"]
            return [[hypothesis] for hypothesis in self.fast(src_ids, **options)]
        return [[hypothesis] for hypothesis in greedy(
            model, src_ids, use_cache=self.use_cache, choose=self._choice(search, device),
            **options)]

    def _fast(self, search: Search, forced: torch.Tensor | None):
        """The compiled greedy decoder (compiled now if not yet), or None where this batch's
        search, prefixes or model need the eager path."""
        if not (self.compile and self.use_cache and search.sampling is None and forced is None
                and fast_path_allows(self.model)):
            return None
        if self.fast is None:
            self.fast = CompiledGreedy(self.model, bos=Tokenizer.BOS, eos=Tokenizer.EOS)
        return self.fast

    def greedy_steps(self) -> CompiledGreedy | StaticGreedy:
        """What continuous batching (model/stream_decode.py) steps with: the compiled decoder
        where plain greedy compiles, else StaticGreedy eager."""
        return self._fast(Search(), None) or StaticGreedy(self.model)

    def _choice(self, search: Search, device: torch.device) -> Callable:
        if search.sampling is None:
            return most_probable
        if self.sampler is None or self.sampler.sampling != search.sampling:
            self.sampler = Sampler(search.sampling, device)
        return self.sampler

    @torch.no_grad()
    def score(self, sources: list[list[int]], targets: list[list[int]]) -> list[list[float]]:
        """The loss of training without label smoothing, negated, token by token."""
        model = self.model
        device = next(model.parameters()).device
        batch = collate(sources, [[Tokenizer.BOS, *ids] for ids in targets], model.pad_id)
        src_ids, tgt_in, tgt_out = (batch.src_ids.to(device), batch.tgt_in.to(device),
                                    batch.tgt_out.to(device))  # (B, S), (B, T), (B, T)
        real = tgt_out.ne(model.pad_id)  # (B, T)
        src_pad_mask = padding_mask(src_ids, model.pad_id)
        memory = model.encode(src_ids, src_pad_mask)  # (B, S, D)
        log_probs = model.logits(model.decode(tgt_in, memory, src_pad_mask)[real])  # (N, V)
        log_probs = log_probs.float().log_softmax(dim=-1)
        chosen = log_probs.gather(1, tgt_out[real][:, None]).squeeze(1)  # (N,), row by row
        return [row.tolist() for row in chosen.split(real.sum(dim=1).tolist())]


def _padded(rows: list[list[int]], pad: int) -> torch.Tensor:
    """Lists of ids -> (B, longest), padded on the right with `pad`."""
    out = torch.full((len(rows), max(map(len, rows))), pad, dtype=torch.long)
    for row, ids in enumerate(rows):
        out[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


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
    """Translate `lines` in batches formed by length; returns the translations in input order."""
    translations = decode_chunk(engine, lines, Search(beam=beam), batch_size=batch_size,
                                first_line=first_line)
    return [translation.text for translation in translations]


def decode_chunks(engine: Engine, chunks: Iterable[list[str]], search: Search, *,
                  batch_size: int, prefix: str = "", token_scores: bool = False,
                  align: Callable | None = None) -> Iterator[Translation]:
    """`mha translate`'s loop: each line is a source, or a source, a tab and the target prefix to
    force (`prefix` where a line has none); a chunk's translations come out as it is done."""
    first_line = 1
    for chunk in chunks:
        sources, prefixes = split_prefixes(chunk, prefix)
        yield from decode_chunk(engine, sources, search, batch_size=batch_size, prefixes=prefixes,
                                token_scores=token_scores, align=align, first_line=first_line)
        first_line += len(chunk)


def decode_chunk(engine: Engine, lines: list[str], search: Search, *, batch_size: int,
                 prefixes: list[str] | None = None, token_scores: bool = False,
                 align: Callable | None = None, first_line: int = 1) -> list[Translation]:
    """Decode `lines` (with their target prefixes) in batches formed by length; returns a
    Translation per line, in input order. `align(lines, sources, translations)` fills their
    word links (inference/translation_links.py).

    A source longer than the model's positions is cut to max_tokens (max_positions - 1), and a
    prefix to max_tokens - 1, with a warning naming its line (counted from first_line).
    """
    tokenizer = engine.tokenizer
    sources = encode_sources(tokenizer, lines, engine.max_tokens, first_line)
    forced = encode_prefixes(tokenizer, prefixes or [""] * len(lines), engine.max_tokens,
                             first_line)
    found: list[list[Hypothesis]] = [[] for _ in lines]
    for batch in batches(sources, batch_size):
        hypotheses = engine.decode([sources[i] for i in batch], search, [forced[i] for i in batch])
        for i, nbest in zip(batch, hypotheses):
            found[i] = nbest
    translations = [Translation(nbest, [tokenizer.decode_tgt(h.ids) for h in nbest])
                    for nbest in found]
    if token_scores:
        add_token_scores(engine, sources, translations, batch_size)
    if align is not None:
        align(lines, sources, translations)
    return translations


def batches(sources: list[list[int]], batch_size: int) -> Iterator[list[int]]:
    """Indices of the non-empty sources, longest first, `batch_size` at a time."""
    order = sorted((i for i, ids in enumerate(sources) if ids), key=lambda i: -len(sources[i]))
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def score_ids(engine: Engine, sources: list[list[int]], targets: list[list[int]],
              batch_size: int) -> list[list[float]]:
    """Each target token's log-probability, teacher-forced, in batches formed by length."""
    scores: list[list[float]] = [[] for _ in sources]
    for batch in batches(sources, batch_size):
        for i, row in zip(batch, engine.score([sources[i] for i in batch],
                                              [targets[i] for i in batch])):
            scores[i] = row
    return scores


def add_token_scores(engine: Engine, sources: list[list[int]],
                     translations: list[Translation], batch_size: int) -> None:
    """Fill each translation's `tokens`: per hypothesis, its pieces and EOS, each with its
    teacher-forced log-probability."""
    pairs = [(source, [*h.ids, Tokenizer.EOS]) for source, t in zip(sources, translations)
             for h in t.hypotheses]
    scores = iter(score_ids(engine, [s for s, _ in pairs], [t for _, t in pairs], batch_size))
    for translation in translations:
        translation.tokens = [
            list(zip(engine.tokenizer.tgt_pieces([*h.ids, Tokenizer.EOS]), next(scores)))
            for h in translation.hypotheses]


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
