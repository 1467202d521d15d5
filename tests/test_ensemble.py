"""`--ensemble`: runs that share a tokenizer decode together, averaging log-probabilities per step,
through the unchanged decoding loops (greedy with and without the KV cache, beam search)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch
from helpers import SENTENCES, assert_user_error, invoke, make_tiny_run

from mha.configs.schema import DataConfig
from mha.data.tokenizer import Tokenizer, train_tokenizer
from mha.inference import checkpoint
from mha.inference.ensemble import Ensemble, load_ensemble
from mha.inference.translate import MhaEngine, translate_lines
from mha.model.decode import beam_search, greedy
from mha.model.masks import padding_mask
from mha.model.transformer import Transformer

pytestmark = pytest.mark.usefixtures("_one_thread")  # one torch thread: the cores are shared


@pytest.fixture(scope="module")
def second_run(small_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny run on the same data and tokenizer, from another seed: other weights."""
    return make_tiny_run(tmp_path_factory.mktemp("second_run"), small_corpus, "train.seed=2")


@pytest.fixture(scope="module")
def sources(small_corpus: Path, loaded) -> torch.Tensor:
    """(B, S) source ids of 12 val sentences, padded on the right."""
    tokenizer = loaded[1]
    rows = tokenizer.encode_src((small_corpus / "val.de").read_text().splitlines()[:12])
    src_ids = torch.full((len(rows), max(map(len, rows))), Tokenizer.PAD)
    for i, ids in enumerate(rows):
        src_ids[i, :len(ids)] = torch.tensor(ids)
    return src_ids


def decoded(model, src_ids: torch.Tensor) -> dict[str, list[list[int]]]:
    """The output ids of each search (their float scores may differ in the last bits)."""
    limits = {"bos": Tokenizer.BOS, "eos": Tokenizer.EOS, "max_len_a": 1.0, "max_len_b": 5}
    return {"greedy": [h.ids for h in greedy(model, src_ids, **limits)],
            "greedy without cache": [h.ids for h in greedy(model, src_ids, use_cache=False,
                                                           **limits)],
            "beam 3": [n[0].ids for n in beam_search(model, src_ids, beam=3, **limits)]}


def test_an_ensemble_of_a_model_with_itself_is_the_model(tiny_run, loaded, sources) -> None:
    itself, _, _ = load_ensemble(tiny_run, "best", [str(tiny_run)], "cpu")
    assert len(itself.members) == 2 and itself.members[0] is not itself.members[1]
    assert decoded(itself, sources) == decoded(loaded[0], sources)


def test_the_command_gives_the_models_output(tiny_run) -> None:
    for beam in ("1", "3"):
        alone = invoke("translate", tiny_run, *SENTENCES, "--beam", beam, "--device", "cpu")
        doubled = invoke("translate", tiny_run, *SENTENCES, "--beam", beam, "--device", "cpu",
                         "--ensemble", tiny_run)
        assert alone.exit_code == doubled.exit_code == 0, doubled.output
        assert doubled.stdout == alone.stdout and len(alone.stdout.splitlines()) == 3


def test_each_step_averages_the_members_log_probabilities(tiny_run, second_run, sources) -> None:
    pair, _, _ = load_ensemble(tiny_run, "best", [str(second_run)], "cpu")
    first, second = pair.members
    tgt_in = torch.cat([torch.full((len(sources), 1), Tokenizer.BOS), sources[:, :6]], dim=1)
    with torch.no_grad():
        members = [m(sources, tgt_in).log_softmax(dim=-1) for m in (first, second)]  # (B, T, V)
        expected = (members[0] + members[1]) / 2
        torch.testing.assert_close(pair(sources, tgt_in), expected)
        mask = padding_mask(sources, pair.pad_id)  # step by step through the KV caches too
        memory, cache = pair.encode(sources, mask), pair.new_cache()
        for step in range(tgt_in.shape[1]):
            hidden = pair.decode(tgt_in[:, step:step + 1], memory, mask, cache)  # (B, 1, D)
            torch.testing.assert_close(pair.logits(hidden[:, -1]), expected[:, step])
    assert not torch.allclose(members[0], members[1], atol=1e-3)  # two different models


def test_two_different_runs_decode_unlike_either(tiny_run, second_run, loaded, sources) -> None:
    pair, tokenizer, cfg = load_ensemble(tiny_run, "best", [str(second_run)], "cpu")
    ours = decoded(pair, sources)
    assert ours["greedy"] == ours["greedy without cache"]
    for member in pair.members:
        theirs = decoded(member, sources)
        assert ours["greedy"] != theirs["greedy"] and ours["beam 3"] != theirs["beam 3"]
    texts = list(translate_lines(MhaEngine(pair, tokenizer, cfg.decode), SENTENCES,
                                 batch_size=2, beam=2))  # the engine and its batching loop
    assert len(texts) == 3


def test_eval_writes_the_ensembles_result_apart_naming_its_members(run_copy, second_run) -> None:
    member = second_run / "checkpoints" / "last.pt"
    result = invoke("eval", run_copy, "--split", "val", "--json", "--device", "cpu",
                    "--ensemble", second_run, "--ensemble", member)
    assert result.exit_code == 0, result.output
    name = f"val.greedy.ensemble+{second_run.name}+{second_run.name}-last"
    saved = json.loads((run_copy / "eval" / f"{name}.json").read_text())
    assert saved == json.loads(result.stdout)
    assert saved["ensemble"] == [
        {"run": str(run_copy), "checkpoint": str(run_copy / "checkpoints" / "best.pt")},
        {"run": str(second_run), "checkpoint": str(second_run / "checkpoints" / "best.pt")},
        {"run": str(second_run), "checkpoint": str(member)}]
    assert (run_copy / "eval" / f"{name}.hyp").is_file()
    assert not (run_copy / "eval" / "val.greedy.json").exists()  # the run's own result stays


def test_an_ensemble_holds_no_two_vocabularies(loaded) -> None:
    model = loaded[0]
    with pytest.raises(ValueError, match="one target vocabulary"):
        Ensemble([model, Transformer(model.cfg, 50, 50)])


@pytest.fixture
def other_tokenizer_run(run_copy: Path, small_corpus: Path) -> Path:
    """The tiny run with a unigram tokenizer of the same size in place of its BPE one."""
    rows = datasets.Dataset.from_dict({
        "src": (small_corpus / "train.de").read_text().splitlines(),
        "tgt": (small_corpus / "train.en").read_text().splitlines()})
    data = DataConfig(vocab_size=200, byte_fallback=False, spm_model_type="unigram")
    tokenizer = train_tokenizer(rows, data, run_copy / "tokenizer")
    for name in ("best.pt", "last.pt"):
        state = checkpoint.load(run_copy / "checkpoints" / name)
        checkpoint.save({**state, "tokenizer": tokenizer.to_state()},
                        run_copy / "checkpoints" / name)
    return run_copy


def test_bad_members_are_one_line_each(tiny_run, other_tokenizer_run, tmp_path) -> None:
    for command in (["translate", tiny_run, "Ein Hund."], ["eval", tiny_run, "--split", "val"]):
        assert_user_error(tiny_run, [*command, "--ensemble", other_tokenizer_run],
                          f"--ensemble {other_tokenizer_run} has a different tokenizer")
        assert_user_error(tiny_run, [*command, "--ensemble", tmp_path / "nowhere"],
                          f"--ensemble {tmp_path / 'nowhere'}: no such run folder or checkpoint")
    for command in (["translate", tiny_run, "x"], ["eval", tiny_run]):
        assert_user_error(tiny_run, [*command, "--ensemble", tiny_run, "--engine", "ctranslate2"],
                          "--attention and --ensemble work on mha's own decoder")
    assert_user_error(tiny_run, ["translate", tiny_run, "x", "--ensemble", tiny_run,
                                 "--attention", tmp_path / "a.png"], "leave out --ensemble")
    assert not (tmp_path / "a.png").exists()
