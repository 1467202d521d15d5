"""Score given translations (`mha score`): the model's log-probability of each target, per
sentence and per subword, and the perplexity of the whole set.

Teacher-forced, as in training: a target's log-probability is the sum over its subwords and EOS
of log p(token | source, the tokens before it), which is minus training's summed cross-entropy
without label smoothing (inference/heads.py's `summed_token_loss`). Per token: that sum over
the number of tokens (EOS included); perplexity: exp(-per token). The set's perplexity is
exp(-all log-probabilities / all tokens): exp of the mean validation loss.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from mha.data.files import DataError, read_lines
from mha.inference.translate import Engine, encode_sources, score_ids


@dataclass
class Scored:
    """One target: its subwords and EOS, each with its log-probability."""

    tokens: list[tuple[str, float]]

    @property
    def log_prob(self) -> float:
        return sum(log_prob for _, log_prob in self.tokens)

    @property
    def per_token(self) -> float:
        return self.log_prob / len(self.tokens)

    @property
    def perplexity(self) -> float:
        return math.exp(-self.per_token)


def read_pairs(src_file: Path, tgt_file: Path) -> tuple[list[str], list[str]]:
    """Sources and targets, line by line; DataError when the files differ in length."""
    sources, targets = read_lines(src_file), read_lines(tgt_file)
    if len(sources) != len(targets):
        raise DataError(f"{src_file} has {len(sources)} lines and {tgt_file} {len(targets)}: "
                        "sources and targets must pair line by line")
    check_pairs(sources, targets, str(tgt_file))
    return sources, targets


def split_pairs(lines: list[str], name: str = "stdin") -> tuple[list[str], list[str]]:
    """'source<TAB>target' lines -> sources and targets; DataError naming a line without a tab."""
    pairs = [line.split("\t", 1) for line in lines]
    for number, pair in enumerate(pairs, 1):
        if len(pair) != 2:
            raise DataError(f"{name}, line {number}: expected source<TAB>target, found no tab")
    sources, targets = [p[0] for p in pairs], [p[1] for p in pairs]
    check_pairs(sources, targets, name)
    return sources, targets


def check_pairs(sources: list[str], targets: list[str], name: str) -> None:
    """DataError naming the first pair with an empty source or target (nothing to score)."""
    for number, (source, target) in enumerate(zip(sources, targets), 1):
        for side, text in (("source", source), ("target", target)):
            if not text.strip():
                raise DataError(f"{name}, line {number}: empty {side} (each pair needs both)")
    if not sources:
        raise DataError(f"{name}: no pairs to score")


def score_pairs(engine: Engine, sources: list[str], targets: list[str], *, batch_size: int,
                name: str = "stdin") -> list[Scored]:
    """Each target's subwords and EOS with their teacher-forced log-probabilities. Sources
    longer than the model's positions are cut (with a warning), as `mha translate` does; a
    target that long is a DataError naming its line."""
    tokenizer = engine.tokenizer
    src_ids = encode_sources(tokenizer, sources, engine.max_tokens)
    tgt_ids = [ids[1:] for ids in tokenizer.encode_tgt([t.strip() for t in targets])]  # no BOS
    for number, ids in enumerate(tgt_ids, 1):
        if len(ids) > engine.max_tokens:
            raise DataError(f"{name}, line {number}: the target has {len(ids) - 1} subwords, "
                            f"more than the model's positions allow ({engine.max_tokens - 1})")
    log_probs = score_ids(engine, src_ids, tgt_ids, batch_size)
    return [Scored(list(zip(tokenizer.tgt_pieces(ids), row)))
            for ids, row in zip(tgt_ids, log_probs)]


def perplexity(scored: list[Scored]) -> float:
    """exp(-summed log-probability / tokens) over the whole set."""
    return math.exp(-sum(s.log_prob for s in scored) / sum(len(s.tokens) for s in scored))


def report_lines(scored: list[Scored], *, tokens: bool = False) -> list[str]:
    """Per pair `log-probability<TAB>per token<TAB>perplexity` (with `tokens`, a fourth column
    of `piece:log-probability` separated by spaces); last, `perplexity: X` for the set."""
    lines = []
    for s in scored:
        line = f"{s.log_prob:.4f}\t{s.per_token:.4f}\t{s.perplexity:.4f}"
        if tokens:
            line += "\t" + " ".join(f"{piece}:{log_prob:.4f}" for piece, log_prob in s.tokens)
        lines.append(line)
    return [*lines, f"perplexity: {perplexity(scored):.4f}"]


def report_json(scored: list[Scored], *, tokens: bool = False) -> str:
    """One JSON object: per sentence log_prob, length (tokens, EOS included), per_token,
    perplexity (and with `tokens`, each token's piece and log_prob); the set's totals."""
    sentences = []
    for s in scored:
        sentence = {"log_prob": s.log_prob, "length": len(s.tokens), "per_token": s.per_token,
                    "perplexity": s.perplexity}
        if tokens:
            sentence["tokens"] = [{"piece": piece, "log_prob": log_prob}
                                  for piece, log_prob in s.tokens]
        sentences.append(sentence)
    return json.dumps({"sentences": sentences, "log_prob": sum(s.log_prob for s in scored),
                       "length": sum(len(s.tokens) for s in scored),
                       "perplexity": perplexity(scored)}, ensure_ascii=False)
