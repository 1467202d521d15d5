"""`--engine ctranslate2` with n-best lists, forced prefixes, sampling and scoring: CTranslate2's
own options give mha's hypotheses and scores.

Exact agreement is expected for greedy search, scoring, prefixes and n-best lists ranked by the
raw log-probability (length penalty 0). With a length penalty the two beams stop differently
(CTranslate2 once `beam` hypotheses have ended, mha once no live one can still win), so their
lists may differ there. Sampling draws from different generators: each is tested for
reproducibility per seed, not for equality with the other. Besides the tiny run (whose outputs
all run to their cap) a variant whose EOS is likelier ends its outputs at many lengths.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import SENTENCES, invoke, optional

from mha.inference import checkpoint
from mha.inference.ct2 import CTranslate2Engine
from mha.inference.export import ExportError, export
from mha.inference.run import load_model
from mha.inference.search import Search
from mha.inference.translate import MhaEngine, encode_sources
from mha.model.decode import greedy
from mha.model.sample import Sampling

pytestmark = pytest.mark.usefixtures("_one_thread")
EOS = 3


@pytest.fixture(scope="module")
def ct2():
    return optional("ctranslate2")


@pytest.fixture(scope="module")
def ending_run(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run with EOS's output row moved along the decoder's mean state: its logit rises
    by about 1.2, so outputs end before their cap."""
    run = Path(shutil.copytree(tiny_run, tmp_path_factory.mktemp("ending") / "run"))
    model, tokenizer, _ = load_model(run)
    src_ids = torch.tensor(tokenizer.encode_src(SENTENCES[:1]))  # (1, S)
    output = greedy(model, src_ids, bos=2, eos=EOS)[0].ids
    with torch.no_grad():
        states = model.decode(torch.tensor([[2, *output]]), model.encode(src_ids, None), None)
    mean = states[0].mean(dim=0)  # (D,)
    best = run / "checkpoints" / "best.pt"
    state = checkpoint.load(best)
    state["model"]["output.weight"][EOS] += 1.2 * mean / mean.norm() ** 2  # tied: one tensor
    checkpoint.save(state, best)
    return run


def engines(run: Path, folder: Path, penalty: float) -> tuple[MhaEngine, CTranslate2Engine]:
    """mha's engine and the export's, both ranking with `penalty`."""
    model, tokenizer, cfg = load_model(run)
    ours = MhaEngine(model, tokenizer, dataclasses.replace(cfg.decode, length_penalty=penalty))
    theirs = CTranslate2Engine(export(run, output=folder, force=True), threads=1)
    theirs.cfg = dataclasses.replace(theirs.cfg, decode=ours.decode_cfg)
    return ours, theirs


def assert_same(ours: list, theirs: list) -> None:
    """Hypotheses per source: the same ids, scores and log-probabilities."""
    assert [[h.ids for h in n] for n in ours] == [[h.ids for h in n] for n in theirs]
    for a, b in zip((h for n in ours for h in n), (h for n in theirs for h in n)):
        assert a.score == pytest.approx(b.score, abs=1e-4)
        assert a.log_prob == pytest.approx(b.log_prob, abs=1e-3)


@pytest.mark.parametrize("which", ["tiny", "ending"])
def test_greedy_nbest_and_prefixes_agree_with_mha(ct2, which, request, tmp_path):
    run = request.getfixturevalue("tiny_run" if which == "tiny" else "ending_run")
    ours, theirs = engines(run, tmp_path / "ct2", penalty=0.0)
    lines = [*SENTENCES, "Ein Hund läuft.", "Eine Frau singt."]
    batch = encode_sources(ours.tokenizer, lines, ours.max_tokens)
    prefix = ours.tokenizer.encode_tgt(["Two dogs"])[0][1:-1]
    for search in (Search(), Search(beam=4, nbest=3)):
        outputs = []
        for prefixes in (None, [prefix, [], prefix, prefix, []]):
            ids = [[s] for s in batch]
            forced = [[p] for p in prefixes] if prefixes else [None] * len(batch)
            mine = [ours.decode(s, search, f)[0] for s, f in zip(ids, forced)]
            assert_same(mine, [theirs.decode(s, search, f)[0] for s, f in zip(ids, forced)])
            outputs.append(mine)
        assert all(h.ids[:len(prefix)] == prefix for i in (0, 2, 3) for h in outputs[1][i])
    caps = theirs.length_caps(batch, [[] for _ in batch])
    ended = [h for n, cap in zip(outputs[0], caps) for h in n if len(h.ids) < cap]
    assert bool(ended) == (which == "ending")  # the variant ends its outputs, tiny never


def test_scores_of_given_targets_agree_with_mha(ct2, tiny_run, exported_tiny):
    ours, theirs = exported_tiny
    batch = encode_sources(ours.tokenizer, SENTENCES, ours.max_tokens)
    targets = [ids[1:] for ids in ours.tokenizer.encode_tgt(
        ["A man rides a bike.", "Two dogs play in the snow.", "A woman sits."])]
    mine, yours = ours.score(batch, targets), theirs.score(batch, targets)
    assert [len(row) for row in mine] == [len(row) for row in yours] == list(map(len, targets))
    torch.testing.assert_close(torch.tensor([x for r in yours for x in r]),
                               torch.tensor([x for r in mine for x in r]), atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def exported_tiny(ct2, tiny_run: Path, tmp_path_factory: pytest.TempPathFactory):
    return engines(tiny_run, tmp_path_factory.mktemp("ct2") / "tiny", penalty=1.0)


def test_sampling_repeats_per_seed_and_top_k_1_is_greedy(ct2, exported_tiny):
    ours, exported = exported_tiny
    batch = encode_sources(ours.tokenizer, SENTENCES * 2, ours.max_tokens)
    def draw(seed: int, **options) -> list[list[int]]:
        engine = CTranslate2Engine(exported.folder, threads=1)  # a model seeds its draws once
        return [n[0].ids for n in engine.decode(batch, Search(sampling=Sampling(seed=seed,
                                                                               **options)))]
    first = draw(1)
    assert draw(1) == first and first[:3] != first[3:]
    drawn = {tuple(map(tuple, draw(seed))) for seed in (2, 3, 4)}
    assert len(drawn | {tuple(map(tuple, first))}) == 4
    greedy_ids = [n[0].ids for n in exported.decode(batch, Search())]
    assert draw(5, top_k=1) == greedy_ids == [n[0].ids for n in ours.decode(batch, Search())]
    engine = CTranslate2Engine(exported.folder, threads=1)
    engine.decode(batch[:1], Search(sampling=Sampling(seed=6)))
    with pytest.raises(ExportError, match="one seed per loaded model: this one drew with 6"):
        engine.decode(batch[:1], Search(sampling=Sampling(seed=7)))


def test_the_commands_take_the_engine(ct2, run_copy):
    assert invoke("export", run_copy, "--to", "ctranslate2").exit_code == 0
    for command in (["translate", "--beam", "3", "--nbest", "2", "--json", "--token-scores",
                     "--prefix", "Two dogs", SENTENCES[0]],
                    ["translate", "--sample", "--seed", "4", "--json", SENTENCES[0]]):
        results = [invoke(command[0], run_copy, *command[1:], *engine)
                   for engine in ([], ["--engine", "ctranslate2"])]
        assert all(r.exit_code == 0 for r in results), [r.output for r in results]
        mine, theirs = (json.loads(r.stdout) for r in results)
        if "--nbest" in command:
            assert mine["text"].startswith("Two dogs") and theirs["text"].startswith("Two dogs")
            assert len(theirs["nbest"]) == 2 and theirs["tokens"][-1]["piece"] == "</s>"
    pairs = "".join(f"{s}\tA man.\n" for s in SENTENCES)
    mine, theirs = (json.loads(invoke("score", run_copy, "--json", *engine, input=pairs).stdout)
                    for engine in ([], ["--engine", "ctranslate2"]))
    assert theirs["perplexity"] == pytest.approx(mine["perplexity"], rel=1e-4)
