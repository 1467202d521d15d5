"""data.byte_fallback: characters the vocabulary lacks pass through as their UTF-8 bytes instead of
"⁇"; on for new configs, off for configs stored before the key existed (their ids never change)."""

from __future__ import annotations

import logging
import unicodedata
from pathlib import Path

import datasets
import pytest

from mha.configs.schema import Config, ConfigError, DataConfig, from_dict, load_config, to_dict
from mha.data.corpus import load_corpus
from mha.data.prepare import data_fingerprint
from mha.data.tokenizer import Tokenizer, train_tokenizer
from mha.inference.translate import warn_unknown_characters

# a name, an emoji, rare letters and CJK: none is in Multi30k's first 300 pairs, and NFKC (which
# SentencePiece applies) leaves each as it is
UNSEEN = "Łukasz 🦜 sagt Ğ ŧ 日本語 ∮"


@pytest.fixture(scope="module")
def train_rows(small_corpus: Path) -> datasets.Dataset:
    return load_corpus(DataConfig(corpus=str(small_corpus)), {"train": "train"})["train"]


def trained(rows: datasets.Dataset, folder: Path, byte_fallback: bool) -> Tokenizer:
    return train_tokenizer(rows, DataConfig(vocab_size=400, byte_fallback=byte_fallback), folder)


def test_a_sentence_of_unseen_characters_round_trips(train_rows, tmp_path, caplog) -> None:
    assert unicodedata.normalize("NFKC", UNSEEN) == UNSEEN
    tokenizer = trained(train_rows, tmp_path / "bytes", byte_fallback=True)
    assert tokenizer.src_vocab_size == 400
    source, target = tokenizer.encode_src([UNSEEN])[0], tokenizer.encode_tgt([UNSEEN])[0]
    assert Tokenizer.UNK not in source and Tokenizer.UNK not in target
    assert tokenizer.decode_tgt(target) == UNSEEN
    assert tokenizer.decode_tgt(source) == UNSEEN  # one joint vocabulary: source ids decode too
    assert "<0xF0>" in tokenizer.tgt_pieces(target)  # the emoji's first byte: it is bytes
    with caplog.at_level(logging.WARNING):
        assert warn_unknown_characters(tokenizer, [UNSEEN], "the arguments") == {}
    assert not [r for r in caplog.records if "does not know" in r.getMessage()]


def test_without_it_they_become_unknown_and_the_warning_names_them(train_rows, tmp_path,
                                                                   caplog) -> None:
    tokenizer = trained(train_rows, tmp_path / "plain", byte_fallback=False)
    target = tokenizer.encode_tgt([UNSEEN])[0]
    assert Tokenizer.UNK in target and "⁇" in tokenizer.decode_tgt(target)
    with caplog.at_level(logging.WARNING):
        unknown = warn_unknown_characters(tokenizer, [UNSEEN], "the arguments")
    assert set(unknown) == set("Ł🦜Ğŧ日本語∮")
    assert [r for r in caplog.records if "does not know" in r.getMessage()]


def test_new_configs_have_it_and_stored_ones_without_the_key_do_not() -> None:
    assert Config().data.byte_fallback is True
    assert load_config("multi30k_de_en").data.byte_fallback is True
    assert from_dict({"data": {"vocab_size": 500}}).data.byte_fallback is True  # hand-written
    stored = to_dict(load_config("multi30k_de_en"))  # as a run folder's config.yaml holds it
    del stored["data"]["byte_fallback"]
    assert from_dict(stored).data.byte_fallback is False


def test_a_run_prepared_before_the_key_keeps_its_data_fingerprint(small_corpus) -> None:
    """Off (the older meaning) leaves the fingerprint as it was, so the stored ids are reused."""
    off, on = (DataConfig(corpus=str(small_corpus), byte_fallback=x) for x in (False, True))
    assert "byte_fallback" not in data_fingerprint(off)["data"]
    assert data_fingerprint(on)["data"]["byte_fallback"] is True
    assert data_fingerprint(off)["hash"] != data_fingerprint(on)["hash"]


def test_a_vocabulary_without_room_for_the_bytes_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"data.vocab_size \(200\) must be at least 262 with "
                                          r"data.byte_fallback: true"):
        load_config("tiny", ["data.vocab_size=200", "data.byte_fallback=true"])
    assert load_config("tiny", ["data.vocab_size=200"]).data.byte_fallback is False
