"""Parallel corpora -> `datasets`: Multi30k (found or downloaded), a local folder, or the hub.

`load_corpus(data)` returns a `Corpus`: a DatasetDict keyed by role (train, val, test) with the
string columns src and tgt. Files go through one path whatever the corpus: find each side's file,
read both in lockstep (checking UTF-8 and that line N of one matches line N of the other), write
an Arrow-backed dataset, then drop empty pairs (logged and counted in `Corpus.dropped_empty`).

Raises DataError, one line naming the file and the problem, for anything the user must fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import http.client
import itertools
import json
import logging
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import datasets
from tqdm import tqdm

from mha.configs.schema import DataConfig
from mha.data.files import DataError, iter_lines

log = logging.getLogger(__name__)

MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw"
MULTI30K_SHA256 = {  # the public files' checksums; a download that differs is refused
    "test_2016_flickr.cs.gz": "200a4a74cc9560f051924abb9803be008d1908d77f747e9141aeb86dfd2797f1",
    "test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
    "test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
    "test_2016_flickr.fr.gz": "6d326e188d259fb1d04ac19eae3af956559b3a0b93d7635e56c90987c40c8b90",
    "train.cs.gz": "a65adb8b32e3bc664f21ecba7a6e7f6950fd1f405e135f7c312faabdb6255077",
    "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "train.fr.gz": "622e75069e9f4c577425c4f277116ce66e63a2401c0a2312d90073cb12379a3c",
    "val.cs.gz": "b63226e05c4bd5dd6a42897d74b86a1b9d2c31498252c572b1ea7f7996927fcc",
    "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
    "val.fr.gz": "ca3106f1a72390591d25f6c45cb4cd39dec4cd3f123e099748a3ce5256c160e9",
}
FEATURES = datasets.Features({"src": datasets.Value("string"), "tgt": datasets.Value("string")})
_FORMAT = 1  # bump when the rows read from a pair of files change, so cached Arrow files rebuild


class Corpus(datasets.DatasetDict):
    """A DatasetDict keyed by role; `dropped_empty[role]` counts the empty pairs dropped."""

    def __init__(self, splits: dict[str, datasets.Dataset] | None = None,
                 dropped_empty: dict[str, int] | None = None) -> None:
        super().__init__(splits or {})
        self.dropped_empty = dropped_empty or {}


def roles(data: DataConfig) -> dict[str, str]:
    """{"train": ..., "val": ..., "test": ...}: each role's split name, as the corpus calls it."""
    return dataclasses.asdict(data.splits)


def load_corpus(data: DataConfig, splits: dict[str, str] | None = None) -> Corpus:
    """Load the pairs of each role in `splits` (default: all of `data.splits`) as src/tgt text.

    Raises DataError for a missing or unreadable file, misaligned sides, or a failed download.
    """
    splits = splits or roles(data)
    corpus = Corpus()
    with _no_progress_bars():  # reading is quick; bars would only clutter the CLI's stderr
        if data.corpus.startswith("hub:"):
            hub = _hub_splits(data, splits)
            raw = {role: hub_pairs(hub[split], data.src_lang, data.tgt_lang)
                   for role, split in splits.items()}
        else:
            raw = {role: _pairs_dataset(src, tgt, f"the {role} split ({splits[role]!r})")
                   for role, (src, tgt) in corpus_files(data, splits).items()}
        for role, pairs in raw.items():
            kept = pairs.filter(_both_sides_present, batched=True)
            corpus[role] = kept
            corpus.dropped_empty[role] = len(pairs) - len(kept)
            if len(pairs) > len(kept):
                log.info("%s (%s): dropped %d of %d pairs with an empty side", role, splits[role],
                         len(pairs) - len(kept), len(pairs))
    return corpus


def corpus_files(
    data: DataConfig, splits: dict[str, str] | None = None,
) -> dict[str, tuple[Path, Path]]:
    """role -> (source file, target file), downloading Multi30k files if needed; {} for the hub."""
    splits = splits or roles(data)
    if data.corpus.startswith("hub:"):
        return {}
    if data.corpus == "multi30k":
        find = functools.partial(multi30k_file, data_dir=data.data_dir)
    else:
        folder = Path(data.corpus).expanduser()
        if not folder.is_dir():
            raise DataError(f"data.corpus {data.corpus!r} is not 'multi30k', 'hub:NAME' "
                            f"or an existing folder of {{split}}.{{lang}} files")
        find = functools.partial(_local_file, folder)
    return {role: (find(split, data.src_lang), find(split, data.tgt_lang))
            for role, split in splits.items()}


def multi30k_file(split: str, lang: str, data_dir: str | None = None) -> Path:
    """Find `{split}.{lang}.gz` in data_dir, $MHA_DATA_DIR, then the cache; else download it.

    The download (from $MHA_MULTI30K_URL if set) is checked against MULTI30K_SHA256 and written
    atomically into the cache folder. Raises DataError naming every place looked and the URL.
    """
    name = f"{split}.{lang}.gz"
    folders = multi30k_folders(data_dir)
    for _, folder in folders:
        for candidate in (folder / name, folder / name.removesuffix(".gz")):
            if candidate.is_file():
                return candidate
    if name not in MULTI30K_SHA256:
        raise DataError(f"{name}: not a Multi30k file (known: {', '.join(MULTI30K_SHA256)})")
    url = f"{os.environ.get('MHA_MULTI30K_URL', MULTI30K_URL).rstrip('/')}/{name}"
    try:
        return _download(url, folders[-1][1] / name, MULTI30K_SHA256[name])
    except DataError as error:
        looked = "; ".join(f"{label} {folder}" for label, folder in folders)
        raise DataError(f"{name} not found (looked in {looked}) and {error}") from error


def multi30k_folders(data_dir: str | None = None) -> list[tuple[str, Path]]:
    """(label, folder) where Multi30k files are looked for, in order; the cache comes last."""
    folders = []
    if data_dir:
        folders.append(("data.data_dir", Path(data_dir).expanduser()))
    if os.environ.get("MHA_DATA_DIR"):
        folders.append(("$MHA_DATA_DIR", Path(os.environ["MHA_DATA_DIR"]).expanduser()))
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    folders.append(("cache", Path(cache_home) / "mha" / "multi30k"))
    return folders


def hub_pairs(rows: datasets.Dataset, src_lang: str, tgt_lang: str) -> datasets.Dataset:
    """Hub rows -> src/tgt text, from a `translation` column of {lang: text} or one per language."""
    columns = rows.column_names
    if "translation" in columns:
        langs = set(rows[0]["translation"]) if len(rows) else {src_lang, tgt_lang}
        if not {src_lang, tgt_lang} <= langs:
            raise DataError(f"hub rows: the translation column has languages {sorted(langs)}, "
                            f"not {src_lang!r} and {tgt_lang!r}")
    elif not {src_lang, tgt_lang} <= set(columns):
        raise DataError(f"hub rows have columns {columns}: expected a 'translation' column of "
                        f"{{lang: text}} or columns {src_lang!r} and {tgt_lang!r}")
    return rows.map(_hub_rows, batched=True, remove_columns=columns, features=FEATURES,
                    fn_kwargs={"src_lang": src_lang, "tgt_lang": tgt_lang})


def _hub_rows(batch: dict, src_lang: str, tgt_lang: str) -> dict[str, list[str]]:
    if "translation" in batch:
        src = [pair[src_lang] for pair in batch["translation"]]
        tgt = [pair[tgt_lang] for pair in batch["translation"]]
    else:
        src, tgt = batch[src_lang], batch[tgt_lang]
    return {"src": [(text or "").strip() for text in src],
            "tgt": [(text or "").strip() for text in tgt]}


def hub_fingerprints(data: DataConfig) -> dict[str, str]:
    """Role -> the hub split's own fingerprint, which `datasets` derives from its files (their
    revision on the hub, their mtimes), so a changed dataset gets a new one. {} for files."""
    if not data.corpus.startswith("hub:"):
        return {}
    with _no_progress_bars():
        raw = _hub_splits(data, roles(data))
    return {role: raw[split]._fingerprint for role, split in roles(data).items()}


def _hub_splits(data: DataConfig, splits: dict[str, str]) -> datasets.DatasetDict:
    """The hub dataset of data.corpus ("hub:NAME" or "hub:NAME:CONFIG"), checked to hold splits."""
    name, _, config = data.corpus.removeprefix("hub:").partition(":")
    try:
        raw = datasets.load_dataset(name, config or None)
    except (OSError, ValueError) as error:  # offline, unknown, gated, or an unknown config
        raise DataError(f"hub dataset {name!r}: {error}".replace("\n", " ")) from error
    missing = [split for split in splits.values() if split not in raw]
    if missing:
        raise DataError(f"hub dataset {name!r} has no split {missing[0]!r} (has: {', '.join(raw)})")
    return raw


def _local_file(folder: Path, split: str, lang: str) -> Path:
    candidates = [folder / f"{split}.{lang}", folder / f"{split}.{lang}.gz"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DataError(f"corpus file {split}.{lang} not found: looked for "
                    f"{' and '.join(str(c) for c in candidates)}")


def _pairs_dataset(src_path: Path, tgt_path: Path, split: str) -> datasets.Dataset:
    """An Arrow-backed dataset of the two files' aligned lines, cached by path, size and mtime."""
    for path in (src_path, tgt_path):
        if next(iter_lines(path), None) is None:
            raise DataError(f"{split}: {path} has no lines (expected a sentence a line)")
    stats = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns]
             for p in (src_path, tgt_path)]
    fingerprint = hashlib.sha256(json.dumps([_FORMAT, stats]).encode()).hexdigest()[:32]
    try:
        return datasets.Dataset.from_generator(
            _pair_rows, features=FEATURES, fingerprint=fingerprint,
            gen_kwargs={"src_path": src_path, "tgt_path": tgt_path})
    except datasets.exceptions.DatasetGenerationError as error:
        cause = error.__cause__
        while cause is not None and not isinstance(cause, DataError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None  # the DataError itself: its own traceback is the whole story


def _pair_rows(src_path: Path, tgt_path: Path) -> Iterator[dict[str, str]]:
    src_lines, tgt_lines = iter_lines(src_path), iter_lines(tgt_path)
    for before, (src, tgt) in enumerate(itertools.zip_longest(src_lines, tgt_lines)):
        if src is None or tgt is None:
            n_src = before + (src is not None) + sum(1 for _ in src_lines)
            n_tgt = before + (tgt is not None) + sum(1 for _ in tgt_lines)
            raise DataError(f"misaligned corpus: {src_path} has {n_src} lines but {tgt_path} "
                            f"has {n_tgt}; line N of one must translate line N of the other")
        yield {"src": src.strip(), "tgt": tgt.strip()}


def _both_sides_present(batch: dict[str, list[str]]) -> list[bool]:
    return [bool(src) and bool(tgt) for src, tgt in zip(batch["src"], batch["tgt"])]


def _download(url: str, dest: Path, sha256: str) -> Path:
    """Fetch url into dest via a temp file in the same folder, replaced in only when verified."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _fetch(url, out)
            out.flush()
            os.fsync(out.fileno())
        if digest != sha256:
            raise DataError(f"the download from {url} has sha256 {digest}, expected {sha256}; "
                            f"nothing cached")
        os.replace(temp, dest)
    finally:
        Path(temp).unlink(missing_ok=True)  # gone already when the download was kept
    log.info("downloaded %s to %s", url, dest)
    return dest


def _fetch(url: str, out: BinaryIO) -> str:
    """Stream url into out with a progress bar; the sha256 of what was received."""
    digest, received, total = hashlib.sha256(), 0, None
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1],
                      disable=None) as bar:
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as error:
        raise DataError(f"downloading {url} failed: HTTP {error.code} {error.reason}") from error
    except urllib.error.URLError as error:
        raise DataError(f"downloading {url} failed: {error.reason}") from error
    except (http.client.HTTPException, OSError) as error:
        raise DataError(f"downloading {url} failed after {received} bytes: {error!r}; "
                        f"nothing cached") from error
    if total is not None and received != total:
        raise DataError(f"downloading {url} failed: the connection closed after {received} "
                        f"of {total} bytes; nothing cached")
    return digest.hexdigest()


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()
