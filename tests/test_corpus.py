"""Corpus loading: Multi30k lookup and download, local folders, hub rows, and every bad corpus."""

from __future__ import annotations

import gzip
import hashlib
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import datasets
import pytest

from mha.configs.schema import DataConfig
from mha.data import corpus as corpus_module
from mha.data.corpus import hub_pairs, load_corpus, multi30k_folders
from mha.data.files import DataError, read_lines

VAL = {"val": "val"}
VAL_FILES = ("val.de.gz", "val.en.gz")


def write_files(folder: Path, files: dict[str, list[str] | bytes]) -> Path:
    """Write {name: lines or raw bytes} into folder; names ending in .gz are gzipped."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        raw = content if isinstance(content, bytes) else "".join(f"{x}\n" for x in content).encode()
        (folder / name).write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
    return folder


@pytest.fixture
def serve():
    """Start a local HTTP server for {name: bytes}; returns (base URL, list of requested paths)."""
    servers = []

    def start(files: dict[str, bytes], truncate: bool = False) -> tuple[str, list[str]]:
        requests: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append(self.path)
                body = files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))  # the full length, always
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if truncate else body)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}", requests

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def cache_dir() -> Path:
    return multi30k_folders()[-1][1]


# -- Multi30k: lookup and download ---------------------------------------------------------------

def test_multi30k_from_data_dir(multi30k_dir: Path) -> None:
    corpus = load_corpus(DataConfig(data_dir=str(multi30k_dir)), VAL)
    assert list(corpus) == ["val"]
    assert len(corpus["val"]) == 1014
    assert corpus["val"].column_names == ["src", "tgt"]
    assert corpus["val"][0]["src"] == read_lines(multi30k_dir / "val.de.gz")[0]


def test_multi30k_from_env(multi30k_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MHA_DATA_DIR", str(multi30k_dir))
    corpus = load_corpus(DataConfig(src_lang="en", tgt_lang="fr"), VAL)
    assert corpus["val"][0]["tgt"] == read_lines(multi30k_dir / "val.fr.gz")[0]


def test_download_verifies_caches_then_reuses(multi30k_dir: Path, serve, monkeypatch) -> None:
    url, requests = serve({name: (multi30k_dir / name).read_bytes() for name in VAL_FILES})
    monkeypatch.setenv("MHA_MULTI30K_URL", url)
    corpus = load_corpus(DataConfig(), VAL)
    assert len(corpus["val"]) == 1014
    assert sorted(requests) == ["/val.de.gz", "/val.en.gz"]
    for name in VAL_FILES:
        digest = hashlib.sha256((cache_dir() / name).read_bytes()).hexdigest()
        assert digest == corpus_module.MULTI30K_SHA256[name]
    assert load_corpus(DataConfig(), VAL)["val"][:] == corpus["val"][:]
    assert len(requests) == 2  # the second load came from the cache


def test_download_with_wrong_checksum_caches_nothing(
    multi30k_dir: Path, serve, monkeypatch,
) -> None:
    files = {name: (multi30k_dir / name).read_bytes() for name in VAL_FILES}
    files["val.de.gz"] = files["val.de.gz"][:-1] + b"x"
    url, _ = serve(files)
    monkeypatch.setenv("MHA_MULTI30K_URL", url)
    with pytest.raises(DataError) as error:
        load_corpus(DataConfig(), VAL)
    message = str(error.value)
    assert f"{url}/val.de.gz" in message
    assert corpus_module.MULTI30K_SHA256["val.de.gz"] in message
    assert hashlib.sha256(files["val.de.gz"]).hexdigest() in message
    assert "\n" not in message
    assert list(cache_dir().iterdir()) == []


def test_download_closed_mid_file_caches_nothing(multi30k_dir: Path, serve, monkeypatch) -> None:
    url, _ = serve({name: (multi30k_dir / name).read_bytes() for name in VAL_FILES}, truncate=True)
    monkeypatch.setenv("MHA_MULTI30K_URL", url)
    with pytest.raises(DataError, match=r"closed after \d+ of \d+ bytes"):
        load_corpus(DataConfig(), VAL)
    assert list(cache_dir().iterdir()) == []


def test_missing_multi30k_names_every_place(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MHA_DATA_DIR", str(tmp_path / "env"))
    with pytest.raises(DataError) as error:
        load_corpus(DataConfig(data_dir=str(tmp_path / "given")), VAL)
    message = str(error.value)
    for place in ("val.de.gz", str(tmp_path / "given"), str(tmp_path / "env"), str(cache_dir()),
                  "/no-network-in-tests/val.de.gz"):
        assert place in message


# -- local folders -------------------------------------------------------------------------------

def test_local_folder_plain(small_corpus: Path) -> None:
    corpus = load_corpus(DataConfig(corpus=str(small_corpus)))
    assert list(corpus) == ["train", "val", "test"]
    assert all(len(rows) == 300 for rows in corpus.values())
    assert corpus["test"]["tgt"][:] == read_lines(small_corpus / "test_2016_flickr.en")


def test_local_folder_gz_reads_the_same(small_corpus: Path, tmp_path: Path) -> None:
    for path in small_corpus.iterdir():
        (tmp_path / f"{path.name}.gz").write_bytes(gzip.compress(path.read_bytes()))
    plain = load_corpus(DataConfig(corpus=str(small_corpus)), VAL)
    packed = load_corpus(DataConfig(corpus=str(tmp_path)), VAL)
    assert packed["val"][:] == plain["val"][:]


def test_missing_local_file_names_it_and_where(tmp_path: Path) -> None:
    write_files(tmp_path, {"train.de": ["a"]})
    with pytest.raises(DataError) as error:
        load_corpus(DataConfig(corpus=str(tmp_path)), {"train": "train"})
    message = str(error.value)
    assert "train.en" in message
    assert str(tmp_path / "train.en") in message and str(tmp_path / "train.en.gz") in message


def test_corpus_that_is_no_folder() -> None:
    with pytest.raises(DataError, match="not 'multi30k', 'hub:NAME' or an existing folder"):
        load_corpus(DataConfig(corpus="/no/such/folder"))


def test_misaligned_line_counts_name_both(tmp_path: Path) -> None:
    write_files(tmp_path, {"train.de": ["eins", "zwei", "drei"], "train.en.gz": ["one", "two"]})
    with pytest.raises(DataError) as error:
        load_corpus(DataConfig(corpus=str(tmp_path)), {"train": "train"})
    message = str(error.value)
    assert f"{tmp_path / 'train.de'} has 3 lines" in message
    assert f"{tmp_path / 'train.en.gz'} has 2" in message


def test_empty_pairs_are_dropped_and_counted(tmp_path: Path, caplog) -> None:
    write_files(tmp_path, {"train.de": ["eins", "", "drei", "vier", "  "],
                           "train.en": ["one", "two", "", "four", "five"]})
    with caplog.at_level(logging.INFO, logger="mha.data.corpus"):
        corpus = load_corpus(DataConfig(corpus=str(tmp_path)), {"train": "train"})
    assert corpus["train"][:] == {"src": ["eins", "vier"], "tgt": ["one", "four"]}
    assert corpus.dropped_empty == {"train": 3}
    assert "dropped 3 of 5 pairs" in caplog.text


def test_undecodable_bytes_name_file_and_line(tmp_path: Path) -> None:
    write_files(tmp_path, {"train.de": b"gut\nschl\xffcht\n", "train.en": ["good", "bad"]})
    with pytest.raises(DataError, match=r"train\.de, line 2: not UTF-8"):
        load_corpus(DataConfig(corpus=str(tmp_path)), {"train": "train"})


def test_read_lines(tmp_path: Path) -> None:
    write_files(tmp_path, {"a.gz": "\ufeffeins\r\nzwei\n".encode(), "b": ["x", "", "y"]})
    (tmp_path / "c.gz").write_bytes(b"not gzip")
    assert read_lines(tmp_path / "a.gz") == ["eins", "zwei"]
    assert read_lines(tmp_path / "b") == ["x", "", "y"]
    with pytest.raises(DataError, match=r"c\.gz: cannot read"):
        read_lines(tmp_path / "c.gz")
    with pytest.raises(DataError, match="cannot read"):
        read_lines(tmp_path / "missing")


# -- the hub -------------------------------------------------------------------------------------

def test_hub_rows_from_a_translation_column() -> None:
    rows = datasets.Dataset.from_dict({"translation": [{"de": " Hallo ", "en": "Hello"},
                                                       {"de": "Welt", "en": "World"}]})
    assert hub_pairs(rows, "de", "en")[:] == {"src": ["Hallo", "Welt"], "tgt": ["Hello", "World"]}


def test_hub_rows_from_language_columns() -> None:
    rows = datasets.Dataset.from_dict(
        {"id": [1, 2], "en": ["Hello", "World"], "de": ["Hallo", "Welt"]})
    assert hub_pairs(rows, "en", "de")[:] == {"src": ["Hello", "World"], "tgt": ["Hallo", "Welt"]}


def test_hub_rows_of_another_shape() -> None:
    with pytest.raises(DataError, match="expected a 'translation' column"):
        hub_pairs(datasets.Dataset.from_dict({"text": ["x"]}), "de", "en")
    rows = datasets.Dataset.from_dict({"translation": [{"fr": "Bonjour", "en": "Hello"}]})
    with pytest.raises(DataError, match=r"languages \['en', 'fr'\]"):
        hub_pairs(rows, "de", "en")


def test_hub_corpus_calls_load_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    rows = datasets.Dataset.from_dict({"translation": [{"de": "Hallo", "en": "Hello"},
                                                       {"de": "", "en": "empty"}]})

    def fake_load_dataset(name: str, config: str | None = None) -> datasets.DatasetDict:
        calls.append((name, config))
        return datasets.DatasetDict({"train": rows, "validation": rows})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = DataConfig(corpus="hub:wmt/wmt14:de-en")
    corpus = load_corpus(data, {"train": "train", "val": "validation"})
    assert calls == [("wmt/wmt14", "de-en")]
    assert corpus["val"][:] == {"src": ["Hallo"], "tgt": ["Hello"]}
    assert corpus.dropped_empty == {"train": 1, "val": 1}
    with pytest.raises(DataError, match="has no split 'test'"):
        load_corpus(DataConfig(corpus="hub:bentrevett/multi30k"), {"test": "test"})
    assert calls[-1] == ("bentrevett/multi30k", None)
