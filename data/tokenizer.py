"""SentencePiece subwords: train one joint model (or one per side) and map text <-> ids.

Special ids are fixed in every model: PAD=0, UNK=1, BOS=2, EOS=3. Sources are encoded as
pieces + EOS, targets as BOS + pieces + EOS. The model protos travel as bytes (`to_state`), so a
checkpoint carries its tokenizer. With data.byte_fallback (SentencePiece's option) the vocabulary
also holds 256 byte pieces, and a character it lacks is encoded as its UTF-8 bytes instead of
UNK, so names, emoji and rare letters come through decoding unchanged.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import datasets
import numpy as np
import sentencepiece as spm

from mha.configs.schema import DataConfig
from mha.data.files import DataError

log = logging.getLogger(__name__)

JOINT_FILE, SRC_FILE, TGT_FILE = "spm.model", "src.model", "tgt.model"
WORD_START = "\u2581"  # "▁": SentencePiece's mark for a space, part of the first piece of a word
_TOO_BIG = re.compile(r"Vocabulary size (too high|is smaller than required_chars)[^\n]*")


class Tokenizer:
    """Source and target SentencePiece models (the same one when `joint`)."""

    PAD, UNK, BOS, EOS = 0, 1, 2, 3

    def __init__(self, src_model: bytes, tgt_model: bytes | None = None) -> None:
        """`tgt_model` None means one joint model serves both sides."""
        self._protos = (src_model, tgt_model)
        self._src = _processor(src_model, "source")
        self._tgt = self._src if tgt_model is None else _processor(tgt_model, "target")

    @property
    def joint(self) -> bool:
        return self._protos[1] is None

    @property
    def src_vocab_size(self) -> int:
        return self._src.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        return self._tgt.get_piece_size()

    def encode_src(self, texts: list[str]) -> list[list[int]]:
        """Each text -> its piece ids + EOS."""
        return [ids + [self.EOS] for ids in self._src.encode(texts, out_type=int)]

    def encode_tgt(self, texts: list[str]) -> list[list[int]]:
        """Each text -> BOS + its piece ids + EOS."""
        return [[self.BOS, *ids, self.EOS] for ids in self._tgt.encode(texts, out_type=int)]

    def sample_src(self, texts: list[str], alpha: float, seed: int) -> list[list[int]]:
        """Like `encode_src`, with a sampled segmentation (see `_sampled_ids`)."""
        return [ids + [self.EOS] for ids in _sampled_ids(self._src, texts, alpha, seed)]

    def sample_tgt(self, texts: list[str], alpha: float, seed: int) -> list[list[int]]:
        """Like `encode_tgt`, with a sampled segmentation (see `_sampled_ids`)."""
        return [[self.BOS, *ids, self.EOS] for ids in _sampled_ids(self._tgt, texts, alpha, seed)]

    def decode_tgt(self, ids: Iterable[int]) -> str:
        """Target ids -> text, stopping at the first EOS and skipping BOS and PAD."""
        before_eos = itertools.takewhile(lambda token: token != self.EOS, map(int, ids))
        return self._tgt.decode([t for t in before_eos if t not in (self.BOS, self.PAD)])

    def unknown_characters(self, texts: Iterable[str]) -> Counter[str]:
        """The characters of texts that the source vocabulary lacks, with their counts: each is
        encoded as UNK and comes out as "⁇" (with byte fallback: none). Characters are counted as
        SentencePiece sees them, after its NFKC normalization: "e" + a combining acute accent is
        "é"."""
        texts = list(texts)
        unknown: Counter[str] = Counter()
        for text, ids in zip(texts, _encoded(self._src, texts)):
            if self.UNK in ids:  # only these lines are worth the character by character look
                unknown.update(char for char in self._src.normalize(text)
                               if char != WORD_START and self._src.piece_to_id(char) == self.UNK)
        return unknown

    def src_pieces(self, text: str) -> list[str]:
        """The pieces of `encode_src([text])[0]`, EOS included: labels for attention pictures."""
        return [self._src.id_to_piece(token) for token in self.encode_src([text])[0]]

    def src_vocab(self) -> list[str]:
        """Every source piece, by id (specials included)."""
        return [self._src.id_to_piece(token) for token in range(self.src_vocab_size)]

    def tgt_pieces(self, ids: Iterable[int]) -> list[str]:
        """One piece per target id, specials included."""
        return [self._tgt.id_to_piece(int(token)) for token in ids]

    def to_state(self) -> dict:
        """The model protos as bytes, for a checkpoint; `from_state` rebuilds the tokenizer."""
        src, tgt = self._protos
        if tgt is None:
            return {"joint": True, "src_model": src}
        return {"joint": False, "src_model": src, "tgt_model": tgt}

    @classmethod
    def from_state(cls, state: dict) -> Tokenizer:
        try:
            return cls(state["src_model"], None if state["joint"] else state["tgt_model"])
        except KeyError as error:
            raise DataError(
                f"tokenizer state lacks {error.args[0]!r} (has: {sorted(state)})") from error

    def save(self, folder: Path) -> None:
        """Write spm.model (joint) or src.model and tgt.model into folder, replacing old ones."""
        folder.mkdir(parents=True, exist_ok=True)
        for name in (JOINT_FILE, SRC_FILE, TGT_FILE):
            (folder / name).unlink(missing_ok=True)
        src, tgt = self._protos
        files = {JOINT_FILE: src} if tgt is None else {SRC_FILE: src, TGT_FILE: tgt}
        for name, proto in files.items():
            (folder / name).write_bytes(proto)

    @classmethod
    def load(cls, folder: str | Path) -> Tokenizer:
        """Read what `save` wrote. Raises DataError when folder holds no tokenizer."""
        folder = Path(folder)
        if (folder / JOINT_FILE).is_file():
            return cls((folder / JOINT_FILE).read_bytes())
        if (folder / SRC_FILE).is_file() and (folder / TGT_FILE).is_file():
            return cls((folder / SRC_FILE).read_bytes(), (folder / TGT_FILE).read_bytes())
        raise DataError(f"no tokenizer in {folder}: expected {JOINT_FILE}, or {SRC_FILE} and "
                        f"{TGT_FILE} (run `mha tokenize CONFIG`)")

    def digest(self) -> str:
        """SHA-256 of the model protos: equal digests, equal ids."""
        return hashlib.sha256(b"".join(proto or b"" for proto in self._protos)).hexdigest()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self._protos == other._protos

    def __repr__(self) -> str:
        kind = "joint" if self.joint else "separate"
        return (f"Tokenizer({kind}, src_vocab_size={self.src_vocab_size}, "
                f"tgt_vocab_size={self.tgt_vocab_size})")


def train_tokenizer(train: datasets.Dataset, data: DataConfig, out_dir: Path) -> Tokenizer:
    """Train SentencePiece on at most data.spm_sample sentences per side and save it in out_dir.

    Sentences stream from the (Arrow-backed) dataset into the trainer, so only the sample is
    held in memory, inside SentencePiece. Raises DataError when data.vocab_size does not fit the
    corpus, or when train has no pairs.
    """
    if len(train) == 0:
        raise DataError("the training split has no pairs to train the tokenizer on")
    sample = _sample(train, data.spm_sample)
    if data.joint_vocab:
        tokenizer = Tokenizer(_train_model(_sentences(sample, ("src", "tgt")), data))
    else:
        tokenizer = Tokenizer(_train_model(_sentences(sample, ("src",)), data),
                              _train_model(_sentences(sample, ("tgt",)), data))
    tokenizer.save(Path(out_dir))
    log.info("trained %r on %d pairs into %s", tokenizer, len(sample), out_dir)
    return tokenizer


def _train_model(sentences: Iterator[str], data: DataConfig) -> bytes:
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences, model_writer=model, vocab_size=data.vocab_size,
            model_type=data.spm_model_type, character_coverage=1.0,
            byte_fallback=data.byte_fallback,
            pad_id=Tokenizer.PAD, unk_id=Tokenizer.UNK, bos_id=Tokenizer.BOS,
            eos_id=Tokenizer.EOS, num_threads=os.cpu_count() or 1, minloglevel=2)
    except RuntimeError as error:
        reason = _TOO_BIG.search(str(error))
        if reason is None:
            raise
        room = " (data.byte_fallback adds 256 byte pieces)" if data.byte_fallback else ""
        raise DataError(f"data.vocab_size ({data.vocab_size}) does not fit this corpus{room}: "
                        f"SentencePiece says {reason[0]!r}") from error
    return model.getvalue()


def _sample(train: datasets.Dataset, size: int, seed: int = 0) -> datasets.Dataset:
    """At most `size` rows of train, drawn without replacement and kept in corpus order."""
    if len(train) <= size:
        return train
    rows = np.random.default_rng(seed).choice(len(train), size=size, replace=False)
    return train.select(np.sort(rows))


def _sentences(rows: datasets.Dataset, columns: tuple[str, ...]) -> Iterator[str]:
    for batch in rows.select_columns(list(columns)).iter(batch_size=1000):
        for column in columns:
            yield from batch[column]


FEW_TEXTS = 8  # up to this many, texts are encoded one by one (see _encoded)


def _encoded(processor: spm.SentencePieceProcessor, texts: list[str]) -> list[list[int]]:
    """Piece ids per text. SentencePiece's call on a list starts a thread pool: 70-80 us a call
    on a quiet machine, 400 on a loaded one, against 3.5 us to encode one sentence; a request
    to `mha serve` holds one sentence or a few, and its check for unknown characters runs on
    the event loop, so few texts are encoded one by one."""
    if len(texts) <= FEW_TEXTS:
        return [processor.encode(text, out_type=int) for text in texts]
    return processor.encode(texts, out_type=int)


def _processor(model: bytes, side: str) -> spm.SentencePieceProcessor:
    processor = spm.SentencePieceProcessor(model_proto=model)
    specials = (processor.pad_id(), processor.unk_id(), processor.bos_id(), processor.eos_id())
    if specials != (Tokenizer.PAD, Tokenizer.UNK, Tokenizer.BOS, Tokenizer.EOS):
        raise DataError(f"the {side} SentencePiece model has special ids (pad, unk, bos, eos) "
                        f"= {specials}, expected (0, 1, 2, 3)")
    return processor


def _sampled_ids(processor: spm.SentencePieceProcessor, texts: list[str], alpha: float,
                 seed: int) -> list[list[int]]:
    """Piece ids of a sampled segmentation: BPE-dropout with probability alpha (bpe models) or a
    draw from the unigram lattice smoothed by alpha; the same (texts, alpha, seed), the same ids.

    SentencePiece draws from a process-wide seed, so it is set here; one thread keeps the draws
    in text order (since sentencepiece 0.2.3 the calling thread's generator is reseeded too).
    seed: 0 <= seed < 2**32 - 1 (2**32 - 1 would mean "seed from the clock").
    """
    spm.set_random_generator_seed(seed)
    return processor.encode(texts, out_type=int, enable_sampling=True, alpha=alpha,
                            nbest_size=-1, num_threads=1)
