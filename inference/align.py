"""How well does attention align words? `mha align`: every head of encoder-decoder attention,
each layer's heads averaged, read as usual and as Shift-Att, scored against reference links.

The model is teacher-forced along each reference in one pass (batched; `AttentionRecorder`
keeps every layer's (B, H, T + 1, S + 1) weights); inference/word_align.py turns each head, and
each layer's mean, into one link per target word, in two readings: "naive" (the row that
predicts the word) and "shift" (Shift-Att: the row that reads it). The reference is eflomal's
symmetrised links (inference/eflomal_links.py: agreement with another aligner, not accuracy) or
a human gold file (`--gold`: a true AER). Scores: inference/aer.py, summed over the sentences.

Legend: B batch, H heads, T target pieces, S source pieces (T + 1 rows: BOS + pieces; S + 1
columns: pieces + EOS), Tw target words.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from mha.configs.schema import ConfigError
from mha.data.batching import collate
from mha.data.tokenizer import Tokenizer
from mha.inference import checkpoint, reports
from mha.inference.aer import Counts, Reference, read_gold, sure_only
from mha.inference.eflomal_links import cache_paths, import_eflomal, reference_lines
from mha.inference.evaluate import eval_set
from mha.inference.run import load_model
from mha.inference.word_align import best_source, word_ids
from mha.model.attention import AttentionRecorder
from mha.model.transformer import Transformer

log = logging.getLogger(__name__)

METHODS = ("naive", "shift")  # the row that predicts a target word; the row that reads it
Key = tuple[str, int, int]  # (method, layer, head); head H is the layer's heads averaged


def measure_alignment(run_dir: Path, split: str = "test", limit: int | None = None,
                      gold: Path | None = None, which: str = "best",
                      device: str = "cpu") -> dict:
    """Score every head, layer mean and Shift-Att reading against the reference links; returns
    the report `write_report` stores as RUN/align.json.

    Raises ConfigError for a limit below 1, AlignError when eflomal is needed and missing,
    DataError for a missing split or a gold file that does not fit the sentences (before
    anything is written), CheckpointError for a missing or unusable checkpoint.
    """
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1 sentence, got {limit}")
    if gold is None:
        import_eflomal()
    sources, references, _ = eval_set(run_dir, split)
    if gold is not None:
        gold_links = read_gold(gold, sources, references)
    model, tokenizer, cfg = load_model(run_dir, which, device)
    step = checkpoint.load(checkpoint.resolve(run_dir, which))["step"]
    if gold is None:
        from mha.data.prepare import load_prepared  # datasets is slow to import

        train = load_prepared(run_dir).splits["train"]
        lines = reference_lines(run_dir, split, (list(train["src"]), list(train["tgt"])),
                                (sources, references))
        gold_links = sure_only(lines)
    sources, references, gold_links = sources[:limit], references[:limit], gold_links[:limit]
    counts = attention_counts(model, tokenizer, sources, references, gold_links,
                              cfg.decode.batch_size)
    what = (f"AER against the gold links in {gold}" if gold is not None else
            "agreement with eflomal's links (grow-diag-final-and, "
            f"{cache_paths(run_dir, split)[0]}), not accuracy against human gold")
    return {"split": split, "sentences": len(sources), "checkpoint": which,
            "checkpoint_step": step, "reference": "gold" if gold is not None else "eflomal",
            "what": what, "sure_links": sum(len(r.sure) for r in gold_links),
            "possible_links": sum(len(r.possible) for r in gold_links),
            **tabulate(counts, len(model.decoder), model.decoder[0].cross_attn.num_heads)}


def encode_pairs(tokenizer: Tokenizer, sources: list[str], references: list[str],
                 max_tokens: int) -> list[tuple[list[int], list[int], list[str], list[str]]]:
    """Per pair: source ids (pieces + EOS), target ids (BOS + pieces + EOS), source pieces and
    target pieces, each side cut to max_tokens - 1 pieces (the model's positions)."""
    keep = max_tokens - 1
    pairs = []
    for source, src, tgt in zip(sources, tokenizer.encode_src(sources),
                                tokenizer.encode_tgt(references)):
        src, tgt = src[:-1][:keep], tgt[1:-1][:keep]
        pairs.append(([*src, Tokenizer.EOS], [Tokenizer.BOS, *tgt, Tokenizer.EOS],
                      tokenizer.src_pieces(source)[:len(src)], tokenizer.tgt_pieces(tgt)))
    return pairs


@torch.no_grad()
def attention_counts(model: Transformer, tokenizer: Tokenizer, sources: list[str],
                     references: list[str], gold: list[Reference],
                     batch_size: int) -> dict[Key, Counts]:
    """One teacher-forced pass over the pairs, in batches sorted by length; the links of every
    (method, layer, head) counted against `gold`."""
    pairs = encode_pairs(tokenizer, sources, references, model.cfg.max_tokens)
    _warn_word_counts(pairs, sources, references)
    layers, heads = len(model.decoder), model.decoder[0].cross_attn.num_heads
    counts = {(m, layer, h): Counts() for m in METHODS for layer in range(layers)
              for h in range(heads + 1)}
    device = model.output.weight.device
    order = sorted(range(len(pairs)), key=lambda i: (len(pairs[i][0]), len(pairs[i][1])))
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size]
        batch = collate([pairs[i][0] for i in indices], [pairs[i][1] for i in indices])
        with AttentionRecorder(model) as recorded:
            model(batch.src_ids.to(device), batch.tgt_in.to(device))
        for row, i in enumerate(indices):
            src_ids, tgt_ids, src_pieces, tgt_pieces = pairs[i]
            columns, rows = len(src_ids), len(tgt_ids) - 1  # pieces + EOS; BOS + pieces
            for layer in range(layers):
                weights = recorded[f"decoder.{layer}.cross_attn"][row]  # (H, T + 1, S + 1)
                cross = weights[:, :rows, :columns].float().cpu()  # padding cut off
                cross = torch.cat([cross, cross.mean(0, keepdim=True)])  # (H + 1, T + 1, S + 1)
                for method in METHODS:
                    best = (best_source(cross, src_pieces, tgt_pieces, method == "shift")
                            if src_pieces and tgt_pieces else torch.zeros(heads + 1, 0))
                    for h, row_links in enumerate(best.tolist()):  # (H + 1, Tw)
                        found = {(source, j) for j, source in enumerate(row_links)}
                        counts[method, layer, h].add(found, gold[i])
    return counts


def _warn_word_counts(pairs: list, sources: list[str], references: list[str]) -> None:
    """Links index the pieces' words; say so when they differ from the text's (normalisation,
    or a sentence cut to the model's positions)."""
    differ = sum(len(set(word_ids(src))) != len(source.split())
                 or len(set(word_ids(tgt))) != len(reference.split())
                 for (_, _, src, tgt), source, reference in zip(pairs, sources, references))
    if differ:
        log.warning("%d of %d sentence pairs have a word count in their pieces that differs from "
                    "their text's (cut to the model's positions, or normalised): their links "
                    "may be shifted", differ, len(pairs))


def tabulate(counts: dict[Key, Counts], layers: int, heads: int) -> dict:
    """Scores per layer (each head, and the heads averaged) and method; the best layer of each
    method by AER (lowest; a tie goes to the lower layer)."""
    table = []
    for layer in range(layers):
        scores = {h: {m: counts[m, layer, h].scores() for m in METHODS} for h in range(heads + 1)}
        table.append({"layer": layer, "heads": [{"head": h, **scores[h]} for h in range(heads)],
                      "mean": scores[heads]})
    best = {}
    for method in METHODS:
        aer = [(entry["mean"][method]["aer"], entry["layer"]) for entry in table
               if entry["mean"][method]["aer"] is not None]
        best[method] = None if not aer else {"layer": min(aer)[1], "aer": min(aer)[0]}
    best_layer = None if best["naive"] is None else best["naive"]["layer"]
    return {"layers": table, "best": best, "best_layer": best_layer}


def default_layer(run_dir: Path, layers: int) -> int:
    """The decoder layer whose averaged heads word links read by default: the best layer
    `mha align` stored in RUN/align.json, else (no file, or a layer this model lacks) the
    second-to-last, as OpenNMT-py does."""
    path, best = Path(run_dir) / "align.json", None
    if path.is_file():
        try:  # a file someone else made: any unusable content falls back, with a warning
            best = json.loads(path.read_text(encoding="utf-8")).get("best_layer")
        except (OSError, ValueError, AttributeError) as error:
            log.warning("%s cannot be read (%s); word links use layer %d", path, error,
                        max(layers - 2, 0))
    return best if isinstance(best, int) and 0 <= best < layers else max(layers - 2, 0)


def write_report(run_dir: Path, report: dict) -> Path:
    """RUN/align.json, written atomically."""
    return reports.write_report(Path(run_dir) / "align.json", report)


def format_report(report: dict) -> str:
    """The table `mha align` prints: what the scores are, then a row per head and layer mean."""
    lines = [(f"{report['sentences']} {report['split']} sentences, checkpoint "
              f"{report['checkpoint']} (step {report['checkpoint_step']}): {report['what']}"),
             (f"{'layer':>5} {'head':>4} | {'AER':>5} {'P':>5} {'R':>5} | Shift-Att: "
              f"{'AER':>5} {'P':>5} {'R':>5}")]

    def cells(scores: dict) -> str:
        return " ".join("    -" if v is None else f"{v:5.3f}" for v in scores.values())

    for entry in report["layers"]:
        for name, scores in [*((str(h["head"]), h) for h in entry["heads"]),
                             ("mean", entry["mean"])]:
            lines.append(f"{entry['layer']:>5} {name:>4} | {cells(scores['naive'])} | "
                         f"           {cells(scores['shift'])}")
    for method, label in zip(METHODS, ("heads averaged", "Shift-Att, heads averaged")):
        best = report["best"][method]
        lines.append(f"best layer ({label}): " + (
            "none (no links)" if best is None else f"{best['layer']} (AER {best['aer']:.3f})"))
    return "\n".join(lines)
