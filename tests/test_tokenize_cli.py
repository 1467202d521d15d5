"""`prepare` (tokenize + encode + cache) and the `mha tokenize` command on a small corpus."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import datasets
import pytest
from typer.testing import CliRunner

from mha.cli.app import app
from mha.configs.schema import Config, from_dict
from mha.data.files import DataError
from mha.data.prepare import Prepared, load_prepared, prepare


def make_config(run_dir: Path, corpus: Path | str, max_positions: int = 1002,
                **data: object) -> Config:
    """A config for corpus with a tiny vocabulary and (unless given) no max_len filtering."""
    data = {"corpus": str(corpus), "vocab_size": 200, "byte_fallback": False,
            "max_len": max_positions - 2, **data}
    return from_dict({"run_dir": str(run_dir), "data": data,
                      "model": {"max_positions": max_positions}})


@pytest.fixture(scope="module")
def prepared(small_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    return prepare(make_config(tmp_path_factory.mktemp("run"), small_corpus))


def test_prepare_encodes_every_split(prepared: Prepared) -> None:
    assert list(prepared.splits) == ["train", "val", "test"]
    train = prepared.splits["train"]
    assert train.column_names == ["src", "tgt", "src_ids", "tgt_ids"]
    assert train.features["src_ids"].feature.dtype == "int32"
    assert train[0]["src_ids"] == prepared.tokenizer.encode_src([train[0]["src"]])[0]
    assert train[0]["tgt_ids"] == prepared.tokenizer.encode_tgt([train[0]["tgt"]])[0]
    report = prepared.report
    assert not report["reused"]
    assert {role: s["pairs"] for role, s in report["splits"].items()} == \
        {"train": 300, "val": 300, "test": 300}
    longest = max(len(ids) - 2 for ids in prepared.splits["val"]["tgt_ids"])
    assert report["splits"]["val"]["tgt_subwords"]["max"] == longest
    assert report["dropped_max_len"] == 0


def test_prepare_reuses_its_cache(prepared: Prepared, small_corpus: Path) -> None:
    cfg = make_config(Path(prepared.splits["train"].cache_files[0]["filename"]).parents[2],
                      small_corpus)
    again = prepare(cfg)
    assert again.report["reused"]
    assert again.tokenizer == prepared.tokenizer
    assert again.splits["train"][:] == prepared.splits["train"][:]
    loaded = load_prepared(cfg.run_dir)
    assert loaded.tokenizer == prepared.tokenizer
    assert loaded.splits["test"][:] == prepared.splits["test"][:]


def test_changed_config_or_corpus_rebuilds(small_corpus: Path, tmp_path: Path) -> None:
    corpus = Path(shutil.copytree(small_corpus, tmp_path / "corpus"))
    first = prepare(make_config(tmp_path / "run", corpus))
    smaller = prepare(make_config(tmp_path / "run", corpus, vocab_size=150))
    assert not smaller.report["reused"] and smaller.tokenizer.src_vocab_size == 150
    rebuilt = prepare(make_config(tmp_path / "run", corpus, vocab_size=150), rebuild=True)
    assert not rebuilt.report["reused"]
    for lang, line in (("de", "Ein Hund."), ("en", "A dog.")):
        with open(corpus / f"train.{lang}", "a", encoding="utf-8") as file:
            file.write(line + "\n")
    grown = prepare(make_config(tmp_path / "run", corpus, vocab_size=150))
    assert not grown.report["reused"]
    assert len(grown.splits["train"]) == len(first.splits["train"]) + 1
    shutil.rmtree(tmp_path / "run" / "tokenizer")
    assert not prepare(make_config(tmp_path / "run", corpus, vocab_size=150)).report["reused"]


def test_a_killed_builds_encoding_folder_is_removed_by_the_next_build(
        small_corpus: Path, tmp_path: Path) -> None:
    leftover = tmp_path / "run" / ".encoding-killed"
    leftover.mkdir(parents=True)
    (leftover / "train.arrow").write_bytes(b"half written")
    prepare(make_config(tmp_path / "run", small_corpus))
    assert not leftover.exists()
    assert not list((tmp_path / "run").glob(".encoding-*"))


def test_max_len_filters_only_training_pairs(prepared: Prepared, small_corpus: Path,
                                             tmp_path: Path) -> None:
    cfg = make_config(tmp_path, small_corpus, max_len=30)
    short = prepare(cfg)
    too_long = sum(len(s) - 1 > 30 or len(t) - 2 > 30 for s, t in
                   zip(prepared.splits["train"]["src_ids"], prepared.splits["train"]["tgt_ids"]))
    assert 0 < too_long < 300
    assert short.report["dropped_max_len"] == too_long
    assert len(short.splits["train"]) == 300 - too_long
    assert short.report["splits"]["train"]["src_subwords"]["max"] <= 30
    assert len(short.splits["val"]) == 300  # val and test keep every pair
    with pytest.raises(DataError, match=r"no non-empty pairs at most data.max_len \(1\)"):
        prepare(make_config(tmp_path, small_corpus, max_len=1))


def test_load_prepared_without_data(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="run `mha tokenize CONFIG` first"):
        load_prepared(tmp_path)


# -- the command ---------------------------------------------------------------------------------

def write_yaml(tmp_path: Path, corpus: Path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(f"run_dir: {tmp_path / 'run'}\ndata:\n  corpus: {corpus}\n  vocab_size: 200\n"
                    "  byte_fallback: false\n")
    return path


def test_tokenize_command_prints_the_report(small_corpus: Path, tmp_path: Path) -> None:
    runner, config = CliRunner(), str(write_yaml(tmp_path, small_corpus))
    result = runner.invoke(app, ["tokenize", config, "--set", "data.max_len=30"])
    assert result.exit_code == 0, result.output
    assert "train  train             300" not in result.stdout  # max_len=30 dropped some
    assert "val    val               300" in result.stdout
    assert "built in" in result.stdout
    assert (tmp_path / "run" / "tokenizer" / "spm.model").is_file()
    again = runner.invoke(app, ["tokenize", config, "--set", "data.max_len=30"])
    assert again.exit_code == 0 and "reused the cache" in again.stdout
    rebuilt = runner.invoke(app, ["tokenize", config, "--set", "data.max_len=30", "--rebuild"])
    assert rebuilt.exit_code == 0 and "built in" in rebuilt.stdout


@pytest.mark.parametrize("problem", ["misaligned", "missing"])
def test_bad_corpus_is_one_line_and_exit_2(
    problem: str, small_corpus: Path, tmp_path: Path,
) -> None:
    corpus = Path(shutil.copytree(small_corpus, tmp_path / "corpus"))
    if problem == "misaligned":
        (corpus / "val.en").write_text("only one line\n")
    else:
        (corpus / "test_2016_flickr.de").unlink()
    result = CliRunner().invoke(app, ["tokenize", str(write_yaml(tmp_path, corpus))])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "Traceback" not in result.output


def test_pairs_lost_to_max_len_and_max_positions_are_counted(
    prepared: Prepared, small_corpus: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    natural = max(split[side]["max"] for split in prepared.report["splits"].values()
                  for side in ("src_subwords", "tgt_subwords"))
    assert natural < 150  # so only the long lines added below go over the limits
    corpus = Path(shutil.copytree(small_corpus, tmp_path / "corpus"))
    long_line = "Ein Hund " * 200  # 400 words: far more subwords than 150 or 202
    added = {"train": (3, "de"), "val": (2, "en"), "test_2016_flickr": (1, "de")}
    for split, (count, long_side) in added.items():
        for lang in ("de", "en"):
            line = long_line if lang == long_side else "Ein Hund."
            with open(corpus / f"{split}.{lang}", "a", encoding="utf-8") as file:
                file.write(f"{line}\n" * count)
    with caplog.at_level(logging.INFO, logger="mha.data.prepare"):
        report = prepare(make_config(tmp_path / "run", corpus, max_positions=202,
                                     max_len=150)).report
    assert report["dropped_max_len"] == 3 and report["splits"]["train"]["pairs"] == 300
    assert report["cut_at_max_positions"] == {"val": 2, "test": 1}
    line = ("data.max_len (150 subwords) dropped 3 of 303 training pairs; pairs longer than "
            "model.max_positions (202) allows, cut when validating or translating: "
            "val 2 of 302, test 1 of 301")
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [line]
    stored = json.loads((tmp_path / "run" / "data" / "report.json").read_text())
    assert stored["cut_at_max_positions"] == report["cut_at_max_positions"]
    wider = prepare(make_config(tmp_path / "run", corpus, max_positions=1002, max_len=150))
    assert wider.report["reused"]  # the data did not change, the count did
    assert wider.report["cut_at_max_positions"] == {"val": 0, "test": 0}
    result = CliRunner().invoke(app, ["tokenize", str(write_yaml(tmp_path, corpus)), "--set",
                                      "data.max_len=150", "--set", "model.max_positions=202"])
    assert result.exit_code == 0, result.output
    assert line in result.stdout


def test_a_changed_hub_dataset_rebuilds(small_corpus: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def split(name: str, extra: int = 0) -> datasets.Dataset:
        sides = {lang: (small_corpus / f"{name}.{lang}").read_text(encoding="utf-8").splitlines()
                 for lang in ("de", "en")}
        return datasets.Dataset.from_dict({lang: lines + [f"Satz {i}." for i in range(extra)]
                                           for lang, lines in sides.items()})

    hub = {"train": split("train"), "validation": split("val"), "test": split("test_2016_flickr")}
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config=None: dict(hub))
    splits = {"train": "train", "val": "validation", "test": "test"}
    cfg = make_config(tmp_path / "run", "hub:someone/pairs", splits=splits)
    assert not prepare(cfg).report["reused"]
    assert prepare(cfg).report["reused"]
    hub["train"] = split("train", extra=2)  # the dataset changed on the hub, not its name
    changed = prepare(cfg)
    assert not changed.report["reused"]
    assert changed.splits["train"]["src"][-2:] == ["Satz 0.", "Satz 1."]
