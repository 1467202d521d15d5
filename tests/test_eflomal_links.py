"""eflomal's reference links (skipped where eflomal is not installed; the `test` extra has it):
links come out as source-target on a corpus whose answer is known, and `mha align` keeps them in
the run folder with what they were computed from, and reuses them."""

import json
import random
from pathlib import Path

import pytest
from helpers import invoke, optional

from mha.inference.eflomal_links import align, cache_paths

eflomal = optional("eflomal")
pytestmark = pytest.mark.usefixtures("_one_thread")


def test_links_are_source_target_on_a_corpus_with_a_known_answer():
    # each source word w becomes two target words, xw yw: source word i links to 2i and 2i + 1
    # (the lengths differ, so links written target-source would land out of range)
    rng = random.Random(0)
    vocabulary = [f"w{i}" for i in range(30)]
    sources = [rng.sample(vocabulary, rng.randint(3, 8)) for _ in range(200)]
    targets = [" ".join(f"x{w} y{w}" for w in words) for words in sources]
    lines = align(eflomal, [" ".join(words) for words in sources], targets)
    expected = [{(i, 2 * i + k) for i in range(len(words)) for k in (0, 1)} for words in sources]
    found = [{tuple(map(int, link.split("-"))) for link in line.split()} for line in lines]
    right = sum(len(f & e) for f, e in zip(found, expected))
    assert right >= 0.95 * sum(map(len, found))  # precision (eflomal samples: not always 1)
    assert right >= 0.9 * sum(map(len, expected))  # recall


def test_mha_align_keeps_eflomals_links_and_reuses_them(run_copy: Path):
    result = invoke("align", run_copy, "--limit", "20", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "agreement with eflomal's links" in result.stdout
    assert "not accuracy against human gold" in result.stdout
    links, about = cache_paths(run_copy, "test")
    lines = links.read_text().splitlines()
    assert len(lines) == 300  # the whole split, whatever --limit says
    record = json.loads(about.read_text())
    assert record["pairs"] == 300 and record["train_pairs"] > 0 and record["split"] == "test"
    from mha.inference.evaluate import eval_set

    sources, references, _ = eval_set(run_copy, "test")
    for line, source, reference in zip(lines, sources, references):
        for link in line.split():
            i, j = map(int, link.split("-"))
            assert i < len(source.split()) and j < len(reference.split())
    report = json.loads((run_copy / "align.json").read_text())
    assert report["reference"] == "eflomal" and report["sentences"] == 20
    stamp = links.stat().st_mtime_ns
    assert invoke("align", run_copy, "--limit", "5", "--device", "cpu").exit_code == 0
    assert links.stat().st_mtime_ns == stamp and links.read_text().splitlines() == lines
