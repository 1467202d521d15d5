"""Characters the tokenizer never saw: `mha translate` and `mha eval` name them and their counts
on stderr, one warning per input (or per chunk of stdin), never one per sentence."""

from __future__ import annotations

import logging

import pytest
from helpers import invoke

from mha.data.tokenizer import Tokenizer

pytestmark = pytest.mark.usefixtures("_one_thread")  # one torch thread: the cores are shared

# an emoji twice, two CJK characters, and two combining accents: the first composes with its "u"
# into "ü" (NFKC, which SentencePiece applies), a known character; the second has no composed
# form with "x", so it stays a character of its own, unknown to a tokenizer trained on Multi30k
LINES = ["Ein Hund 😀 bellt 😀.", "中文", "Mu\u0308ller sagt x\u0301."]
EXPECTED = {"😀": 2, "中": 1, "文": 1, "\u0301": 1}
LISTED = "'😀' U+1F600 x2, '中' U+4E2D x1, '文' U+6587 x1, '\u0301' U+0301 x1"


def unknown_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and " the tokenizer does not know" in r.getMessage()]


def test_unknown_characters_are_counted_as_sentencepiece_sees_them(loaded) -> None:
    tokenizer: Tokenizer = loaded[1]
    assert tokenizer.unknown_characters(LINES) == EXPECTED
    assert tokenizer.unknown_characters(["Müller sagt nichts."]) == {}
    for line in [*LINES, "Müller sagt nichts."]:  # a line has UNK ids exactly when it has some
        has_unk = Tokenizer.UNK in tokenizer.encode_src([line])[0]
        assert has_unk == bool(tokenizer.unknown_characters([line])), line


def test_translate_names_them_in_one_line(tiny_run, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        result = invoke("translate", tiny_run, *LINES)
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 3
    assert unknown_warnings(caplog) == [
        f"the arguments: 5 characters the tokenizer does not know, read as unknown (⁇): {LISTED}"]


def test_translate_from_stdin_warns_once_per_chunk(tiny_run, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        result = invoke("translate", tiny_run, input="".join(f"{line}\n" for line in LINES))
    assert result.exit_code == 0, result.output
    assert unknown_warnings(caplog) == [
        f"stdin lines 1-3: 5 characters the tokenizer does not know, read as unknown (⁇): {LISTED}"]


def test_eval_names_them_with_the_file_and_known_text_says_nothing(tiny_run, tmp_path,
                                                                   caplog) -> None:
    src, ref = tmp_path / "odd.de", tmp_path / "odd.en"
    src.write_text("".join(f"{line}\n" for line in LINES), encoding="utf-8")
    ref.write_text("A dog barks.\nChinese\nMüller says x.\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        result = invoke("eval", tiny_run, "--src-file", src, "--ref-file", ref,
                        "--output", tmp_path / "odd.hyp")
        assert result.exit_code == 0, result.output
        assert unknown_warnings(caplog) == [
            f"{src}: 5 characters the tokenizer does not know, read as unknown (⁇): {LISTED}"]
        caplog.clear()
        assert invoke("translate", tiny_run, "Ein Hund bellt.").exit_code == 0
    assert unknown_warnings(caplog) == []


def test_a_long_list_is_cut_short(loaded, caplog) -> None:
    from mha.inference.translate import UNKNOWN_SHOWN, warn_unknown_characters

    many = "".join(chr(0x4E00 + i) for i in range(UNKNOWN_SHOWN + 3))
    with caplog.at_level(logging.WARNING):
        assert len(warn_unknown_characters(loaded[1], [many], "x")) == UNKNOWN_SHOWN + 3
    assert unknown_warnings(caplog)[0].endswith(" and 3 more")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        warn_unknown_characters(loaded[1], ["Ein 😀."], "y")
    assert unknown_warnings(caplog) == [
        "y: 1 character the tokenizer does not know, read as unknown (⁇): '😀' U+1F600 x1"]
