"""Corpus -> tokenizer -> encoded Arrow splits in the run folder, rebuilt only when inputs change.

`prepare(cfg)` writes `{run_dir}/tokenizer/` and `{run_dir}/data/` (a DatasetDict saved with
`save_to_disk`: roles train/val/test, columns src, tgt, src_ids, tgt_ids) beside report.json and
fingerprint.json. The fingerprint hashes the data config and the corpus files' sizes and mtimes;
while it matches, later calls load the stored data instead of rebuilding. `load_prepared(run_dir)`
is the read side for later commands.

Everything streams: SentencePiece trains on a sample, encoding runs through `Dataset.map` into
memory-mapped Arrow files, and the report's statistics are computed by Arrow on those files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.compute as pc

from mha.configs.schema import OLDER_MEANING, Config, DataConfig
from mha.data.corpus import Corpus, corpus_files, hub_fingerprints, load_corpus, roles
from mha.data.files import DataError
from mha.data.tokenizer import Tokenizer, train_tokenizer

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the encoded layout changes, so older run folders rebuild
FINGERPRINT, REPORT = "fingerprint.json", "report.json"
_ABSENT = object()
ENCODED = datasets.Features({
    "src": datasets.Value("string"), "tgt": datasets.Value("string"),
    "src_ids": datasets.List(datasets.Value("int32")),  # pieces + EOS
    "tgt_ids": datasets.List(datasets.Value("int32")),  # BOS + pieces + EOS
})


@dataclass
class Prepared:
    """A trained tokenizer and the encoded splits, keyed by role (train, val, test)."""

    tokenizer: Tokenizer
    splits: datasets.DatasetDict
    report: dict


def prepare(cfg: Config, rebuild: bool = False, tokenizer: Tokenizer | None = None) -> Prepared:
    """Train the tokenizer and encode every split into cfg.run_dir, or reuse what is there.

    A given `tokenizer` (another run's, for `mha train --init-from`) encodes the corpus instead
    of a new one; the run folder keeps it, and later calls without it (resume, `mha tokenize`)
    reuse it. Only the training split is filtered by data.max_len. Every call logs what was lost
    (pairs dropped by data.max_len, pairs that model.max_positions cuts) and writes it to
    report.json. Raises DataError for a bad corpus.
    """
    start = time.perf_counter()
    run_dir = Path(cfg.run_dir)
    stored = _stored_fingerprint(run_dir)
    tokenizer = tokenizer or _kept_tokenizer(run_dir, stored)
    fingerprint = data_fingerprint(cfg.data, tokenizer)
    prepared = None
    if not rebuild and stored is not None and stored.get("hash") == fingerprint["hash"]:
        try:
            prepared = load_prepared(run_dir)
        except DataError as error:  # e.g. the tokenizer folder was deleted by hand
            log.info("cannot reuse %s (%s): rebuilding", run_dir / "data", error)
        else:
            log.info("data config and corpus unchanged: reusing %s", run_dir / "data")
    built = prepared is None
    if built:
        prepared = _build(cfg, fingerprint, tokenizer)
    report = prepared.report
    report["seconds"] = round(time.perf_counter() - start, 2)
    report["max_positions"] = cfg.model.max_positions  # not in the fingerprint: counted each time
    report["cut_at_max_positions"] = over_max_positions(prepared.splits, cfg.model.max_positions)
    level = logging.WARNING if any_pairs_lost(report) else logging.INFO
    log.log(level, "%s", pairs_lost_summary(report))
    (run_dir / "data" / REPORT).write_text(json.dumps(report, indent=1))
    if built:
        (run_dir / "data" / FINGERPRINT).write_text(json.dumps(fingerprint, indent=1))  # last
    return prepared


def over_max_positions(splits: datasets.DatasetDict, max_positions: int) -> dict[str, int]:
    """Per role but train, the pairs longer than the model's positions: validation and
    translation cut their source to max_positions - 1 tokens (EOS included) and their target to
    max_positions. (Training pairs fit: the config keeps data.max_len + 2 <= max_positions.)"""
    counts = {}
    for role, rows in splits.items():
        if role == "train":
            continue
        src = pc.greater(pc.list_value_length(rows.data.column("src_ids")), max_positions - 1)
        tgt = pc.greater(pc.list_value_length(rows.data.column("tgt_ids")), max_positions)
        counts[role] = int(pc.sum(pc.or_(src, tgt)).as_py() or 0)
    return counts


def any_pairs_lost(report: dict) -> bool:
    """True when data.max_len dropped a training pair or model.max_positions cuts any pair."""
    return bool(report["dropped_max_len"] or any(report["cut_at_max_positions"].values()))


def pairs_lost_summary(report: dict) -> str:
    """One line: the training pairs data.max_len dropped, the pairs max_positions cuts."""
    pairs = {role: split["pairs"] for role, split in report["splits"].items()}
    dropped = report["dropped_max_len"]
    cut = ", ".join(f"{role} {count} of {pairs[role]}"
                    for role, count in report["cut_at_max_positions"].items())
    return (f"data.max_len ({report['max_len']} subwords) dropped {dropped} of "
            f"{pairs['train'] + dropped} training pairs; pairs longer than model.max_positions "
            f"({report['max_positions']}) allows, cut when validating or translating: {cut}")


def load_prepared(run_dir: str | Path) -> Prepared:
    """The tokenizer and encoded splits `prepare` stored in run_dir.

    Raises DataError when run_dir holds no tokenized data.
    """
    run_dir = Path(run_dir)
    data_dir = run_dir / "data"
    if not (data_dir / FINGERPRINT).is_file():
        raise DataError(f"no tokenized data in {data_dir}: run `mha tokenize CONFIG` first")
    report = json.loads((data_dir / REPORT).read_text())
    report["reused"] = True
    splits = datasets.load_from_disk(str(data_dir))
    return Prepared(Tokenizer.load(run_dir / "tokenizer"), splits, report)


def data_fingerprint(data: DataConfig, tokenizer: Tokenizer | None = None) -> dict:
    """What the encoded data depends on (data config, corpus files' sizes and mtimes, or a hub
    dataset's own fingerprints, and a tokenizer given from another run) and its hash."""
    files = [[str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns]
             for pair in corpus_files(data).values() for path in pair]
    inputs = {"format": FORMAT, "data": _meaningful(data), "files": files}
    if tokenizer is not None:
        inputs["tokenizer"] = tokenizer.digest()
    if data.corpus.startswith("hub:"):
        inputs["hub"] = hub_fingerprints(data)
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return {"hash": digest, **inputs}


def _meaningful(data: DataConfig) -> dict:
    """The data config without the keys at their OLDER_MEANING (data.byte_fallback: false): a
    run prepared before such a key existed keeps its fingerprint, so its data are reused."""
    return {key: value for key, value in dataclasses.asdict(data).items()
            if OLDER_MEANING.get(f"data.{key}", _ABSENT) != value}


def format_report(report: dict) -> str:
    """The report as a small table, for the CLI and benchmarks."""
    rows = [("role", "split", "pairs", "src subwords mean/max", "tgt subwords mean/max",
             "empty dropped")]
    for role, split in report["splits"].items():
        src, tgt = split["src_subwords"], split["tgt_subwords"]
        rows.append((role, split["split"], str(split["pairs"]), f"{src['mean']:.1f} / {src['max']}",
                     f"{tgt['mean']:.1f} / {tgt['max']}", str(split["dropped_empty"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in rows]
    tok = report["tokenizer"]
    vocab = (str(tok["src_vocab_size"]) if tok["joint"]
             else f"{tok['src_vocab_size']} src + {tok['tgt_vocab_size']} tgt")
    lines += [
        pairs_lost_summary(report),
        f"tokenizer: {'joint' if tok['joint'] else 'separate'} {tok['model_type']}, vocab {vocab}",
        f"{'reused the cache' if report['reused'] else 'built'} in {report['seconds']:.1f} s",
    ]
    return "\n".join(lines)


def _build(cfg: Config, fingerprint: dict, tokenizer: Tokenizer | None) -> Prepared:
    """Read the corpus, train the tokenizer (unless one is given), encode and save every split;
    time each stage."""
    run_dir, data_dir = Path(cfg.run_dir), Path(cfg.run_dir) / "data"
    times = [time.perf_counter()]
    corpus = load_corpus(cfg.data)  # its refusals come before anything is written
    times.append(time.perf_counter())
    (data_dir / FINGERPRINT).unlink(missing_ok=True)  # a half-done rebuild must not pass for done
    if tokenizer is None:
        tokenizer = train_tokenizer(corpus["train"], cfg.data, run_dir / "tokenizer")
    else:  # another run's: its ids, so its weights fit
        tokenizer.save(run_dir / "tokenizer")
    times.append(time.perf_counter())
    for leftover in sorted(run_dir.glob(".encoding-*")):  # a killed build's; never read
        shutil.rmtree(leftover, ignore_errors=True)
        log.info("removed %s, left by an interrupted build", leftover)
    with tempfile.TemporaryDirectory(dir=run_dir, prefix=".encoding-") as work:
        encoded = datasets.DatasetDict({
            role: _encode(rows, tokenizer, Path(work) / f"{role}.arrow", fingerprint["hash"],
                          cfg.data.max_len if role == "train" else None)
            for role, rows in corpus.items()
        })
        _check_not_empty(encoded, cfg.data)
        if data_dir.exists():
            shutil.rmtree(data_dir)
        encoded.save_to_disk(str(data_dir))
    splits = datasets.load_from_disk(str(data_dir))
    times.append(time.perf_counter())
    report = _report(cfg.data, corpus, splits, tokenizer)
    report["stage_seconds"] = {stage: round(end - begin, 2) for stage, begin, end in
                               zip(("corpus", "tokenizer", "encode"), times, times[1:])}
    return Prepared(tokenizer, splits, report)


def _stored_fingerprint(run_dir: Path) -> dict | None:
    path = run_dir / "data" / FINGERPRINT
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError:
        log.warning("%s is not valid JSON: rebuilding", path)
        return None
    return stored if isinstance(stored, dict) else None


def _kept_tokenizer(run_dir: Path, stored: dict | None) -> Tokenizer | None:
    """The run's tokenizer when it came from another run (its fingerprint says so), else None."""
    if stored is None or "tokenizer" not in stored:
        return None
    try:
        return Tokenizer.load(run_dir / "tokenizer")
    except (DataError, RuntimeError) as error:
        raise DataError(f"{run_dir} was prepared with another run's tokenizer (mha train "
                        f"--init-from), which does not load from {run_dir / 'tokenizer'} "
                        f"({error}); start the run again") from error


def _check_not_empty(splits: datasets.DatasetDict, data: DataConfig) -> None:
    for role, rows in splits.items():
        if len(rows) == 0:
            why = f" at most data.max_len ({data.max_len}) subwords long" if role == "train" else ""
            raise DataError(f"the {role} split ({roles(data)[role]!r} of {data.corpus}) has no "
                            f"non-empty pairs{why}")


def _encode(rows: datasets.Dataset, tokenizer: Tokenizer, cache_file: Path, fingerprint: str,
            max_len: int | None) -> datasets.Dataset:
    """Add src_ids and tgt_ids; with max_len, drop pairs longer than that on either side."""
    return rows.map(
        _encode_batch, batched=True, remove_columns=rows.column_names, features=ENCODED,
        fn_kwargs={"tokenizer": tokenizer, "max_len": max_len},
        cache_file_name=str(cache_file), load_from_cache_file=False,
        new_fingerprint=hashlib.sha256(f"{fingerprint}-{cache_file.stem}".encode()).hexdigest()[:32],
        desc=f"encoding {cache_file.stem}")


def _encode_batch(batch: dict[str, list[str]], tokenizer: Tokenizer,
                  max_len: int | None) -> dict[str, list]:
    src_ids, tgt_ids = tokenizer.encode_src(batch["src"]), tokenizer.encode_tgt(batch["tgt"])
    keep = [max_len is None or (len(s) - 1 <= max_len and len(t) - 2 <= max_len)
            for s, t in zip(src_ids, tgt_ids)]
    columns = {"src": batch["src"], "tgt": batch["tgt"], "src_ids": src_ids, "tgt_ids": tgt_ids}
    return {name: [x for x, k in zip(values, keep) if k] for name, values in columns.items()}


def _report(data: DataConfig, corpus: Corpus, splits: datasets.DatasetDict,
            tokenizer: Tokenizer) -> dict:
    names = roles(data)
    return {
        "corpus": data.corpus, "src_lang": data.src_lang, "tgt_lang": data.tgt_lang,
        "splits": {role: {
            "split": names[role], "pairs": len(rows), "dropped_empty": corpus.dropped_empty[role],
            "src_subwords": _length_stats(rows.data.column("src_ids"), specials=1),
            "tgt_subwords": _length_stats(rows.data.column("tgt_ids"), specials=2),
        } for role, rows in splits.items()},
        "max_len": data.max_len,
        "dropped_max_len": len(corpus["train"]) - len(splits["train"]),
        "tokenizer": {"joint": tokenizer.joint, "model_type": data.spm_model_type,
                      "src_vocab_size": tokenizer.src_vocab_size,
                      "tgt_vocab_size": tokenizer.tgt_vocab_size},
        "reused": False,
    }


def _length_stats(ids: pa.ChunkedArray, specials: int) -> dict:
    """Mean and max subwords per sentence (specials not counted), computed by Arrow."""
    lengths = pc.subtract(pc.list_value_length(ids), specials)
    if len(lengths) == 0:
        return {"mean": 0.0, "max": 0}
    return {"mean": round(pc.mean(lengths).as_py(), 2), "max": pc.max(lengths).as_py()}
