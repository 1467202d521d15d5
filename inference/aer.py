"""Alignment error rate, precision and recall (Och and Ney 2003), and reading reference links.

A reference has sure links S and possible links P (P includes S); a predicted alignment is A.
Over a corpus the counts are summed before dividing:

    AER = 1 - (|A∩S| + |A∩P|) / (|A| + |S|)    precision = |A∩P| / |A|    recall = |A∩S| / |S|

With only sure links (P = S, as for eflomal's), AER is 1 - F1. Pharaoh lines hold `i-j` (source
word i, target word j, 0-based) for a sure link and `i-pj` for a possible one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from mha.data.files import DataError, read_lines

Link = tuple[int, int]  # (source word i, target word j)
LINK = re.compile(r"(\d+)-(p?)(\d+)")


@dataclass
class Reference:
    """One sentence's reference links: sure, and possible (sure ones included)."""

    sure: set[Link] = field(default_factory=set)
    possible: set[Link] = field(default_factory=set)


@dataclass
class Counts:
    """Summed over sentences: |A|, |S|, |A∩S|, |A∩P|."""

    found: int = 0
    sure: int = 0
    found_sure: int = 0
    found_possible: int = 0

    def add(self, found: set[Link], reference: Reference) -> None:
        self.found += len(found)
        self.sure += len(reference.sure)
        self.found_sure += len(found & reference.sure)
        self.found_possible += len(found & reference.possible)

    def scores(self) -> dict[str, float | None]:
        """AER, precision and recall (None where a denominator is zero)."""
        def ratio(numerator: int, denominator: int) -> float | None:
            return numerator / denominator if denominator else None

        agreement = ratio(self.found_sure + self.found_possible, self.found + self.sure)
        return {"aer": None if agreement is None else 1 - agreement,
                "precision": ratio(self.found_possible, self.found),
                "recall": ratio(self.found_sure, self.sure)}


def parse_line(line: str) -> Reference | None:
    """A Pharaoh line's links; None when a token is not `i-j` or `i-pj`."""
    reference = Reference()
    for token in line.split():
        match = LINK.fullmatch(token)
        if match is None:
            return None
        link = (int(match[1]), int(match[3]))
        reference.possible.add(link)
        if not match[2]:
            reference.sure.add(link)
    return reference


def sure_only(lines: list[str]) -> list[Reference]:
    """Lines of `i-j` links (an aligner's, all sure) as references."""
    return [Reference(set(r.sure), set(r.possible)) for r in map(parse_line, lines)]


def read_gold(path: Path, sources: list[str], targets: list[str]) -> list[Reference]:
    """A gold file (one Pharaoh line per sentence pair) checked against the pairs' words.

    Raises DataError naming the file and line for a wrong line count, a token that is not a
    link, or an index past the end of its sentence.
    """
    lines = read_lines(path)
    if len(lines) != len(sources):
        raise DataError(f"gold file {path} has {len(lines)} lines but there are {len(sources)} "
                        "sentences to score: it needs one line of links per sentence")
    references = []
    for number, (line, source, target) in enumerate(zip(lines, sources, targets), 1):
        reference = parse_line(line)
        if reference is None:
            bad = next(t for t in line.split() if LINK.fullmatch(t) is None)
            raise DataError(f"{path} line {number}: {bad!r} is not a link (expected i-j for a "
                            "sure link or i-pj for a possible one, 0-based word indices)")
        words = len(source.split()), len(target.split())
        for i, j in sorted(reference.possible):
            if i >= words[0] or j >= words[1]:
                raise DataError(f"{path} line {number}: link {i}-{j} is out of range: the "
                                f"source has {words[0]} words and the target {words[1]}")
        references.append(reference)
    return references
