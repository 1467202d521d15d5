"""AER, precision and recall on a hand-worked example with sure and possible links, summed
over sentences; a gold file that does not fit its sentences is one DataError naming the line."""

from pathlib import Path

import pytest

from mha.data.files import DataError
from mha.inference.aer import Counts, parse_line, read_gold, sure_only


def test_aer_precision_recall_by_hand():
    counts = Counts()
    # sentence 1: A = {0-0, 1-1, 2-1, 3-3}; S = {0-0, 1-1}; P = S + {2-1, 2-2}
    # |A| 4, |S| 2, |A∩S| 2, |A∩P| 3
    counts.add({(0, 0), (1, 1), (2, 1), (3, 3)}, parse_line("0-0 1-1 2-p1 2-p2"))
    assert counts.scores() == pytest.approx({"aer": 1 - 5 / 6, "precision": 3 / 4,
                                             "recall": 2 / 2})
    # sentence 2: A = {0-0}; S = P = {0-1}: nothing found; the counts add up before dividing
    counts.add({(0, 0)}, parse_line("0-1"))
    assert counts.scores() == pytest.approx({"aer": 1 - 5 / 8, "precision": 3 / 5,
                                             "recall": 2 / 3})


def test_sure_links_alone_make_aer_one_minus_f1():
    counts = Counts()
    for found, line in [({(0, 0), (1, 2)}, "0-0 1-1 2-2"), ({(0, 1)}, "0-1")]:
        counts.add(found, sure_only([line])[0])
    precision, recall = 2 / 3, 2 / 4
    assert counts.scores()["aer"] == pytest.approx(
        1 - 2 * precision * recall / (precision + recall))


def test_nothing_to_divide_is_none():
    assert Counts().scores() == {"aer": None, "precision": None, "recall": None}


def test_parse_line():
    reference = parse_line("0-0 3-p1  2-10")
    assert reference.sure == {(0, 0), (2, 10)}
    assert reference.possible == {(0, 0), (2, 10), (3, 1)}
    assert parse_line("0:1") is None and parse_line("0-1-2") is None and parse_line("a-b") is None


@pytest.mark.parametrize("lines, message", [
    (["0-0", "0-0"], "has 2 lines but there are 3 sentences"),
    (["0-0", "1-1 0:1", "0-0"], "line 2: '0:1' is not a link"),
    (["0-0", "1-1", "0-0 3-p0"], "line 3: link 3-0 is out of range: the source has 3 words"),
    (["0-2", "", ""], ("line 1: link 0-2 is out of range: the source has 2 words and the "
                       "target 2")),
])
def test_a_gold_file_that_does_not_fit_is_one_error_naming_the_line(
        tmp_path: Path, lines: list[str], message: str):
    path = tmp_path / "gold.txt"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message):
        read_gold(path, ["ein Hund", "zwei Hunde", "drei Hunde laufen"],
                  ["a dog", "two dogs", "three dogs"])


def test_a_gold_file_that_fits(tmp_path: Path):
    path = tmp_path / "gold.txt"
    path.write_text("0-0 1-1\n\n0-p0 1-1\n")
    gold = read_gold(path, ["ein Hund", "zwei", "drei Hunde"], ["a dog", "two", "three dogs"])
    assert [r.sure for r in gold] == [{(0, 0), (1, 1)}, set(), {(1, 1)}]
    assert gold[2].possible == {(0, 0), (1, 1)}
