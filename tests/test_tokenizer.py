"""SentencePiece tokenizer: round trips, fixed special ids, joint vs separate, state, errors."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest

from mha.configs.schema import DataConfig
from mha.data.corpus import load_corpus
from mha.data.files import DataError
from mha.data.tokenizer import Tokenizer, train_tokenizer

VOCAB = 200


@pytest.fixture(scope="module")
def train_rows(small_corpus: Path) -> datasets.Dataset:
    return load_corpus(DataConfig(corpus=str(small_corpus)), {"train": "train"})["train"]


@pytest.fixture(scope="module")
def joint(train_rows: datasets.Dataset, tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    data = DataConfig(vocab_size=VOCAB, byte_fallback=False, joint_vocab=True)
    return train_tokenizer(train_rows, data, tmp_path_factory.mktemp("joint"))


def test_ids_round_trip(joint: Tokenizer, train_rows: datasets.Dataset) -> None:
    texts = train_rows["tgt"][:20]
    for text, ids in zip(texts, joint.encode_tgt(texts)):
        assert joint.decode_tgt(ids) == text


def test_special_ids_are_fixed(joint: Tokenizer, train_rows: datasets.Dataset) -> None:
    assert (Tokenizer.PAD, Tokenizer.UNK, Tokenizer.BOS, Tokenizer.EOS) == (0, 1, 2, 3)
    assert joint.tgt_pieces([0, 1, 2, 3]) == ["<pad>", "<unk>", "<s>", "</s>"]
    text = train_rows["tgt"][0]
    src_ids, tgt_ids = joint.encode_src([text])[0], joint.encode_tgt([text])[0]
    assert src_ids[-1] == Tokenizer.EOS and Tokenizer.BOS not in src_ids
    assert tgt_ids[0] == Tokenizer.BOS and tgt_ids[-1] == Tokenizer.EOS
    assert tgt_ids[1:] == src_ids  # joint: the same pieces on both sides
    assert all(token > Tokenizer.EOS for token in src_ids[:-1])
    padded = [Tokenizer.BOS, *tgt_ids[1:], 7, 8, Tokenizer.PAD, Tokenizer.PAD]
    assert joint.decode_tgt(padded) == text  # stops at EOS, skips BOS and PAD


def test_pieces_label_every_id(joint: Tokenizer) -> None:
    text = "Ein Mann schläft."
    pieces = joint.src_pieces(text)
    assert len(pieces) == len(joint.encode_src([text])[0]) and pieces[-1] == "</s>"
    assert "".join(pieces[:-1]).replace("▁", " ").strip() == text
    tgt_ids = joint.encode_tgt([text])[0]
    assert joint.tgt_pieces(tgt_ids)[0] == "<s>" and len(joint.tgt_pieces(tgt_ids)) == len(tgt_ids)


def test_joint_model_is_one_file(joint: Tokenizer, tmp_path: Path) -> None:
    assert joint.joint and joint.src_vocab_size == joint.tgt_vocab_size == VOCAB
    joint.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spm.model"]


def test_separate_models(train_rows: datasets.Dataset, tmp_path: Path) -> None:
    data = DataConfig(vocab_size=VOCAB, byte_fallback=False, joint_vocab=False,
                      spm_model_type="unigram")
    separate = train_tokenizer(train_rows, data, tmp_path)
    assert not separate.joint
    assert separate.src_vocab_size == separate.tgt_vocab_size == VOCAB
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.model", "tgt.model"]
    assert separate.to_state()["src_model"] != separate.to_state()["tgt_model"]
    text = train_rows["tgt"][3]
    assert separate.decode_tgt(separate.encode_tgt([text])[0]) == text
    assert Tokenizer.load(tmp_path) == separate


def test_state_round_trip(joint: Tokenizer, train_rows: datasets.Dataset, tmp_path: Path) -> None:
    state = joint.to_state()
    assert isinstance(state["src_model"], bytes)
    restored = Tokenizer.from_state(state)
    assert restored == joint and restored.to_state() == state
    texts = train_rows["src"][:10]
    assert restored.encode_src(texts) == joint.encode_src(texts)
    joint.save(tmp_path)
    assert Tokenizer.load(tmp_path) == joint
    with pytest.raises(DataError, match="lacks 'tgt_model'"):
        Tokenizer.from_state({"joint": False, "src_model": state["src_model"]})


def test_vocab_too_large_names_the_size(train_rows: datasets.Dataset, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.vocab_size \(50000\) does not fit"):
        train_tokenizer(train_rows, DataConfig(vocab_size=50000), tmp_path)


def test_trains_on_at_most_spm_sample_pairs(train_rows: datasets.Dataset, tmp_path: Path) -> None:
    # 300 pairs easily hold 200 unigram pieces (test_separate_models); a sample of 1 cannot
    data = DataConfig(vocab_size=VOCAB, byte_fallback=False, spm_model_type="unigram", spm_sample=1)
    with pytest.raises(DataError, match="does not fit"):
        train_tokenizer(train_rows, data, tmp_path)


def test_load_without_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="mha tokenize"):
        Tokenizer.load(tmp_path)
