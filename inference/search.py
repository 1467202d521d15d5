"""What `mha translate` asks of a search and what it gets back: `Search` (beam size, n-best,
sampling), forced target prefixes (`--prefix`, or a line's second, tab-separated column), and
`Translation`, one per input line, printed as text, n-best lines or JSON.

An n-best line is `rank<TAB>score<TAB>log-probability<TAB>text`, rank 1 the best: the score is
what the search ranks by, log-probability / length ** length_penalty (length: the tokens chosen,
EOS included), the log-probability beside it unnormalised (model/decode.py).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass

from mha.configs.schema import ConfigError
from mha.data.tokenizer import Tokenizer
from mha.inference.word_align import pharaoh
from mha.model.decode import Hypothesis
from mha.model.sample import Sampling

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Search:
    """How each sentence is decoded: a beam of `beam` (1: greedy) keeping `nbest` hypotheses,
    or, with `sampling`, greedy's loop drawing each token. Raises ConfigError for a bad value."""

    beam: int = 1
    nbest: int = 1
    sampling: Sampling | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.nbest < 1:
            problems.append(f"--nbest must be 1 or more, got {self.nbest}")
        elif self.nbest > self.beam:
            problems.append(f"--nbest ({self.nbest}) is above the beam size ({self.beam}): a beam "
                            f"keeps only that many hypotheses; give --beam {self.nbest} or more")
        s = self.sampling
        if s is not None:
            if self.beam > 1:
                problems.append(f"--sample draws one token at a time: it does not combine with "
                                f"--beam {self.beam}")
            if s.top_k is not None and s.top_k < 1:
                problems.append(f"--top-k must be 1 or more, got {s.top_k}")
            if not 0 < s.top_p <= 1:
                problems.append(f"--top-p must be in (0, 1], got {s.top_p}")
            if not 0 < s.temperature < math.inf:
                problems.append(f"--temperature must be above 0, got {s.temperature}")
            if s.seed < 0:
                problems.append(f"--seed must be 0 or more, got {s.seed}")
        if problems:
            raise ConfigError("; ".join(problems))


@dataclass
class Translation:
    """One input line's outputs, best first (none for a blank line): hypotheses, their texts
    and, when asked, each one's (piece, log-probability) per output token and EOS, and each
    one's word links (source word, target word) (inference/translation_links.py)."""

    hypotheses: list[Hypothesis]
    texts: list[str]
    tokens: list[list[tuple[str, float]]] | None = None
    links: list[list[tuple[int, int]]] | None = None

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""




def split_prefixes(lines: list[str], prefix: str = "") -> tuple[list[str], list[str]]:
    """'source<TAB>target prefix' lines -> sources and prefixes (`prefix` where a line has no
    tab)."""
    parts = [line.split("\t", 1) for line in lines]
    return [p[0] for p in parts], [p[1] if len(p) > 1 else prefix for p in parts]


def encode_prefixes(tokenizer: Tokenizer, prefixes: list[str], max_tokens: int,
                    first_line: int = 1) -> list[list[int]]:
    """Target prefix ids (pieces, no BOS/EOS) per line, [] for none, cut to max_tokens - 1 so
    that one token can follow."""
    encoded = [ids[1:-1] for ids in tokenizer.encode_tgt([p.strip() for p in prefixes])]
    for number, ids in enumerate(encoded, first_line):
        if len(ids) >= max_tokens:
            log.warning("line %d: a target prefix of %d subwords, more than the model's "
                        "positions allow; forcing the first %d", number, len(ids),
                        max_tokens - 1)
            del ids[max_tokens - 1:]
    return encoded




def nbest_lines(translation: Translation, nbest: int, alignments: bool = False) -> list[str]:
    """`rank<TAB>score<TAB>log-probability<TAB>text` per hypothesis, best first (with
    `alignments`, a tab and its Pharaoh links after each); a blank input line gives `nbest` lines
    of ranks with empty fields."""
    tab = "\t" if alignments else ""
    if not translation.hypotheses:
        return [f"{rank}\t\t\t{tab}" for rank in range(1, nbest + 1)]
    return [f"{rank}\t{h.score:.4f}\t{h.log_prob:.4f}\t{text}"
            + (f"\t{pharaoh(translation.links[rank - 1])}" if alignments else "")
            for rank, (h, text) in enumerate(zip(translation.hypotheses, translation.texts), 1)]


def json_line(translation: Translation, nbest: bool = False) -> str:
    """`json_object` as one line of JSON."""
    return json.dumps(json_object(translation, nbest), ensure_ascii=False)


def json_object(translation: Translation, nbest: bool = False) -> dict:
    """What `--json` prints for a translation (and `mha serve` answers): the best hypothesis's
    text, score and log_prob (null for a blank input line), its `tokens` ([{piece, log_prob}],
    EOS last) when they were scored, and with `nbest` every hypothesis the same way under
    "nbest". Further per-translation facts join as keys."""
    entries = []
    for i, (h, text) in enumerate(zip(translation.hypotheses, translation.texts)):
        entry = {"text": text, "score": h.score, "log_prob": h.log_prob}
        if translation.tokens is not None:
            entry["tokens"] = [{"piece": piece, "log_prob": log_prob}
                               for piece, log_prob in translation.tokens[i]]
        if translation.links is not None:
            entry["alignments"] = pharaoh(translation.links[i])
        entries.append(entry)
    aligned = {"alignments": ""} if translation.links is not None else {}
    best = entries[0] if entries else {"text": "", "score": None, "log_prob": None, **aligned}
    return {**best, "nbest": entries} if nbest else best
