"""Is "Hund" near "dog"? Bilingual lexicon induction from a run's embedding tables.

The word pairs come from eflomal's links on the test split (run `mha align RUN` first: it keeps
them in RUN/align/eflomal.test.txt): each source word's most often linked target word, for the
--pairs source words linked most often (punctuation left out). A word's vector is the mean of its
pieces' rows (source side: the source or tied table; target side: the target or tied table).
For each pair, the candidates are every distinct target word of the split's references; precision
at 1 and 5 is the share of pairs whose target word is among the 1 or 5 candidates nearest by
cosine. With one tied table, a word spelt the same on both sides ("Frisbee") finds itself: the
pairs whose two words differ are reported on their own.

    python bench/lexicon.py RUN [--pairs 500] [--results bench/results_lexicon.md]
"""

from __future__ import annotations

import argparse
import sys
import unicodedata
from collections import Counter
from pathlib import Path

import torch

from mha.inference.embeddings import lexicon_precision, tables, word_vector
from mha.inference.evaluate import eval_set
from mha.inference.run import load_model


def is_word(token: str) -> bool:
    return any(not unicodedata.category(c).startswith("P") for c in token)


def aligned_pairs(sources: list[str], references: list[str], links: list[str],
                  count: int) -> list[tuple[str, str, int]]:
    """(source word, its most often linked target word, how often), most frequent first."""
    seen: Counter[tuple[str, str]] = Counter()
    for src, ref, line in zip(sources, references, links, strict=True):
        s, t = src.split(), ref.split()
        for link in line.split():
            i, j = map(int, link.split("-"))
            if is_word(s[i]) and is_word(t[j]):
                seen[s[i], t[j]] += 1
    best: dict[str, tuple[str, int]] = {}
    for (s, t), n in seen.most_common():
        best.setdefault(s, (t, n))
    ranked = sorted(best.items(), key=lambda item: -item[1][1])[:count]
    return [(s, t, n) for s, (t, n) in ranked]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--results", type=Path, default=Path("bench/results_lexicon.md"))
    args = parser.parse_args()
    links_path = args.run / "align" / "eflomal.test.txt"
    if not links_path.exists():
        sys.exit(f"error: {links_path} is missing; run `mha align {args.run}` first")
    sources, references, _ = eval_set(args.run, "test")
    pairs = aligned_pairs(sources, references, links_path.read_text().splitlines(), args.pairs)
    model, tokenizer, _ = load_model(args.run, "best", "cpu")
    found = tables(model)
    src_table = found.get("tied", found.get("source"))
    tgt_table = found.get("tied", found.get("target"))
    words = sorted({w for ref in references for w in ref.split() if is_word(w)})
    index = {w: i for i, w in enumerate(words)}
    with torch.no_grad():
        candidates = torch.stack([word_vector(tgt_table, tokenizer, w, "target") for w in words])
        vectors = torch.stack([word_vector(src_table, tokenizer, s, "source") for s, _, _ in pairs])
    answers = [index[t] for _, t, _ in pairs]
    differ = [k for k, (s, t, _) in enumerate(pairs) if s.lower() != t.lower()]
    everything = lexicon_precision(vectors, candidates, answers)
    different = lexicon_precision(vectors[differ], candidates, [answers[k] for k in differ])
    shown = ", ".join(f"{s}-{t}" for s, t, _ in pairs[:8])
    lines = [(f"Lexicon induction on {args.run.name} (best.pt; embeddings: "
             f"{', '.join(found)}): the {len(pairs)} source words eflomal links most often on "
             f"test2016, each with its most often linked target word (first: {shown}); "
             f"{len(words)} candidate target words. Command: `python bench/lexicon.py RUN`."),
             "",
             "| pairs | how many | P@1 | P@5 |", "|---|---|---|---|",
             f"| all | {len(pairs)} | {everything[1]:.3f} | {everything[5]:.3f} |",
             f"| the two words differ | {len(differ)} | {different[1]:.3f} | {different[5]:.3f} |"]
    args.results.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
