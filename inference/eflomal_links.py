"""Reference word links that need no human: eflomal (Östling and Tiedemann 2016, "Efficient
Word Alignment with Markov Chain Monte Carlo"), an optional extra (`pip install 'mha[align]'`).

eflomal aligns a split's sources with their references, trained on the training split's text and
the split's own (it is unsupervised: more text, better links), in both directions (its IBM-style
models link each word of one side to at most one of the other), whitespace words, lowercased.
`symmetrise.grow_diag_final_and` makes one alignment of the two. eflomal samples from a random
seed, so a second computation differs a little: the links are kept in RUN/align/eflomal.SPLIT.txt
(one Pharaoh line per sentence pair) beside a JSON file saying what they were computed from, and
reused while that matches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from mha.data.files import atomic_write, read_lines
from mha.inference.symmetrise import grow_diag_final_and
from mha.inference.word_align import pharaoh

log = logging.getLogger(__name__)
logging.getLogger("eflomal").setLevel(logging.WARNING)  # its "Prepared N sentences" at INFO

INSTALL = "pip install 'mha[align]'"
SETTINGS = {"model": 3, "n_samplers": 3, "null_prior": 0.2, "lowercase": True,
            "symmetrisation": "grow-diag-final-and (forward links first)"}


class AlignError(Exception):
    """An alignment that cannot be computed as asked; the message says why and what to do."""


def import_eflomal():
    """The eflomal module, or AlignError saying how to install it (an optional extra)."""
    try:
        import eflomal
    except ImportError:
        raise AlignError(f"eflomal is not installed; install it with: {INSTALL}") from None
    return eflomal


def cache_paths(run_dir: Path, split: str) -> tuple[Path, Path]:
    folder = Path(run_dir) / "align"
    return folder / f"eflomal.{split}.txt", folder / f"eflomal.{split}.json"


def reference_lines(run_dir: Path, split: str, train: tuple[list[str], list[str]],
                    pairs: tuple[list[str], list[str]]) -> list[str]:
    """eflomal's links for `pairs` (sources, references), one Pharaoh line each: from the cache
    when it was computed from these same texts and settings, else computed and kept."""
    eflomal = import_eflomal()
    about = {"eflomal": version("eflomal"), **SETTINGS, "split": split,
             "pairs": len(pairs[0]), "train_pairs": len(train[0]),
             "texts_sha256": _digest([*train, *pairs])}
    links_path, about_path = cache_paths(run_dir, split)
    if about_path.is_file() and links_path.is_file():
        kept = json.loads(about_path.read_text())
        lines = read_lines(links_path)
        if ({key: kept.get(key) for key in about} == about
                and kept.get("links_sha256") == _digest([lines])):
            log.info("eflomal links reused from %s", links_path)
            return lines
    start = time.perf_counter()
    lines = align(eflomal, [*train[0], *pairs[0]], [*train[1], *pairs[1]])[len(train[0]):]
    seconds = time.perf_counter() - start
    log.info("eflomal aligned %d + %d pairs in %.1f s", len(train[0]), len(pairs[0]), seconds)
    text = "".join(f"{line}\n" for line in lines).encode("utf-8")
    atomic_write(links_path, lambda file: file.write(text))
    record = {**about, "links_sha256": _digest([lines]), "seconds": round(seconds, 1),
              "computed_from": f"the {split} split's sources and references, aligned with the "
                               f"training split's text ({len(train[0])} pairs) added"}
    atomic_write(about_path, lambda file: file.write(json.dumps(record, indent=1).encode()))
    return lines


def align(eflomal, sources: list[str], targets: list[str]) -> list[str]:
    """Both directions of eflomal over the pairs, symmetrised: one Pharaoh line per pair."""
    with tempfile.TemporaryDirectory(prefix="mha-eflomal-") as folder:
        forward, backward = Path(folder) / "forward", Path(folder) / "backward"
        aligner = eflomal.Aligner(model=SETTINGS["model"], n_samplers=SETTINGS["n_samplers"],
                                  null_prior=SETTINGS["null_prior"])
        aligner.align(sources, targets, links_filename_fwd=str(forward),
                      links_filename_rev=str(backward))
        directions = read_lines(forward), read_lines(backward)
    return [pharaoh(sorted(grow_diag_final_and(_links(f), _links(b))))
            for f, b in zip(*directions)]


def _links(line: str) -> set[tuple[int, int]]:
    return {tuple(map(int, token.split("-"))) for token in line.split()}


def _digest(texts: list[list[str]]) -> str:
    """SHA-256 of lists of lines, each list's lines joined, the lists kept apart."""
    digest = hashlib.sha256()
    for lines in texts:
        digest.update("\n".join(lines).encode("utf-8") + b"\x00")
    return digest.hexdigest()
