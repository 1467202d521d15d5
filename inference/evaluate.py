"""Score translations with sacreBLEU: corpus BLEU and chrF on detokenized, cased text.

sacreBLEU's defaults are the point: 13a tokenization of plain text, so scores compare across
papers and tokenizers, and each comes with the signature that says how it was computed.
Lowercased BLEU (sacreBLEU's `-lc`, `case:lc` in its signature) comes beside it, for the papers
that report that instead.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from sacrebleu.metrics import BLEU, CHRF

from mha.data.files import DataError, atomic_write, read_lines, write_lines
from mha.inference.search import Search
from mha.inference.translate import (
    CHUNK_BATCHES,
    Engine,
    chunked,
    decode_chunk,
    encode_sources,
)
from mha.inference.word_align import pharaoh

log = logging.getLogger(__name__)

ROLES = ("test", "val")


def score(hypotheses: list[str], references: list[str]) -> dict:
    """Corpus BLEU (cased and lowercased) and chrF of hypotheses against one reference each.

    Returns bleu, bleu_lc and chrf (0-100), their one-line summaries (bleu_text, bleu_lc_text,
    chrf_text) and signature ({"bleu": ..., "bleu_lc": ..., "chrf": ...}). Raises DataError for
    unequal or empty lists.
    """
    if len(hypotheses) != len(references):
        raise DataError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not references:
        raise DataError("nothing to score: no sentences")
    metrics = {"bleu": BLEU(), "bleu_lc": BLEU(lowercase=True), "chrf": CHRF()}
    result: dict = {"signature": {}}
    for name, metric in metrics.items():
        scored = metric.corpus_score(hypotheses, [references])
        result[name], result[f"{name}_text"] = scored.score, str(scored)
        result["signature"][name] = str(metric.get_signature())
    return result


def eval_set(
    run_dir: Path, role: str = "test", src_file: Path | None = None, ref_file: Path | None = None,
) -> tuple[list[str], list[str], str]:
    """(sources, references, name): the run's prepared split `role`, or a pair of text files.

    Raises DataError for files of different lengths, only one of the two files, or a run
    folder without tokenized data. Cheap: call it before loading the model, to fail fast.
    """
    if (src_file is None) != (ref_file is None):
        raise DataError("--src-file and --ref-file go together: give both or neither")
    if src_file is not None and ref_file is not None:
        sources, references = read_lines(src_file), read_lines(ref_file)
        if len(sources) != len(references):
            raise DataError(f"{src_file} has {len(sources)} lines but {ref_file} has "
                            f"{len(references)}: they must pair line by line")
        return sources, references, Path(src_file).name.removesuffix(".gz")
    if role not in ROLES:
        raise DataError(f"split must be one of {', '.join(ROLES)}, got {role!r}")
    from mha.data.prepare import load_prepared  # datasets is slow to import

    split = load_prepared(run_dir).splits[role]
    return list(split["src"]), list(split["tgt"]), role


def evaluate(
    engine: Engine, sources: list[str], references: list[str], *, batch_size: int, beam: int,
    hyp_path: Path | None = None, result_path: Path | None = None, provenance: dict | None = None,
    ensemble: list[dict] | None = None, align=None, align_path: Path | None = None,
) -> dict:
    """Translate sources with `engine` (mha's or an exported model), score against references,
    write the hypotheses (atomically) to hyp_path and the returned dict as JSON (atomically) to
    result_path, for `mha compare` to read; `provenance` (where the run and this evaluation come
    from) and `ensemble` (its members, when `engine` decodes several runs) go into the result as
    they are.

    With `align` (a translation_links.Aligner), each hypothesis's Pharaoh word links go to
    align_path, a line per sentence (the timing leaves them out).

    Returns score()'s keys plus sentences, seconds, sentences_per_second, beam, compile_seconds
    (the engine's one-time compilation, left out of seconds) and hypotheses.
    """
    start = time.perf_counter()
    translations, first_line = [], 1
    for chunk in chunked(iter(sources), batch_size * CHUNK_BATCHES):  # as translate_lines does
        translations += decode_chunk(engine, chunk, Search(beam=beam), batch_size=batch_size,
                                     first_line=first_line)
        first_line += len(chunk)
    seconds = time.perf_counter() - start - engine.compile_seconds  # reported on its own
    hypotheses = [translation.text for translation in translations]
    result = score(hypotheses, references)
    if hyp_path is not None:
        write_lines(hyp_path, hypotheses)
        log.debug("wrote %d hypotheses to %s", len(hypotheses), hyp_path)
    if align is not None and align_path is not None:
        align(sources, encode_sources(engine.tokenizer, sources, engine.max_tokens),
              translations)
        write_lines(align_path, [pharaoh(t.links[0]) if t.links else "" for t in translations])
    result = {**result, "sentences": len(sources), "seconds": round(seconds, 3),
              "sentences_per_second": round(len(sources) / max(seconds, 1e-9), 1), "beam": beam,
              "compile_seconds": round(engine.compile_seconds, 3),
              "hypotheses": str(hyp_path) if hyp_path is not None else None,
              **({"provenance": provenance} if provenance is not None else {}),
              **({"ensemble": ensemble} if ensemble else {})}
    if result_path is not None:
        text = json.dumps(result, indent=1).encode("utf-8")
        atomic_write(result_path, lambda file: file.write(text))
    return result
