"""`mha export --to ctranslate2` and `--engine ctranslate2`: the export decodes like mha.

Faithfulness: each test sentence decoded alone, greedy, with mha's length cap, gives the same
tokens from the float32 export as from mha, except where mha's own top-2 logit margin at the
first difference is below 1e-4 (a tie that float rounding may break either way). Checked on the
session's tiny run (pre-norm, ReLU, sinusoidal, one tied vocabulary) and on a variant with every
other option (post-norm, GELU, learned positions, two untied vocabularies).
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import SENTENCES, assert_user_error, invoke, make_tiny_run, optional

from mha.inference.ct2 import CTranslate2Engine, compare_greedy, top2_margin
from mha.inference.export import QUANTIZATIONS, ExportError, build_spec, export
from mha.inference.run import load_model
from mha.inference.search import Search
from mha.inference.translate import MhaEngine, encode_sources, translate_chunk, translate_lines

pytestmark = pytest.mark.usefixtures("_one_thread")  # one torch thread: the cores are shared

VARIANT = ["model.norm=post", "model.activation=gelu", "model.positional=learned",
           "data.joint_vocab=false", "model.tie_embeddings=false"]


@pytest.fixture(scope="module")
def ct2():
    return optional("ctranslate2")


@pytest.fixture(scope="module")
def variant_run(small_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("variant_run"), small_corpus, *VARIANT)


@pytest.fixture(scope="module")
def exported(ct2, tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(tiny_run, output=tmp_path_factory.mktemp("export") / "float32")


def test_export_writes_a_ctranslate2_folder(ct2, run_copy):
    result = invoke("export", run_copy, "--to", "ctranslate2")
    assert result.exit_code == 0, result.output
    folder = run_copy / "ctranslate2"
    assert str(folder) in result.stdout
    assert {"model.bin", "config.json", "shared_vocabulary.json", "spm.model", "mha.yaml",
            "README.md"} <= {path.name for path in folder.iterdir()}
    config = json.loads((folder / "config.json").read_text())
    assert config["add_source_eos"] and not config["add_source_bos"]
    assert (config["decoder_start_token"], config["eos_token"]) == ("<s>", "</s>")
    assert config["layer_norm_epsilon"] == pytest.approx(1e-5)
    vocabulary = json.loads((folder / "shared_vocabulary.json").read_text())
    assert vocabulary[:4] == ["<pad>", "<unk>", "<s>", "</s>"] and len(vocabulary) == 200
    assert not [path for path in run_copy.iterdir() if path.name.startswith(".ctranslate2")]


@pytest.mark.parametrize("which", ["tiny", "variant"])
def test_float32_export_decodes_like_mha_sentence_by_sentence(ct2, which, request, tmp_path):
    run = request.getfixturevalue("tiny_run" if which == "tiny" else "variant_run")
    model, tokenizer, cfg = load_model(run)
    lines = _test_lines(run)[:300 if which == "tiny" else 150]
    sources = encode_sources(tokenizer, lines, cfg.model.max_tokens)
    engine = CTranslate2Engine(export(run, output=tmp_path / "ct2"), threads=1)
    agreement = compare_greedy(model, engine, sources)
    assert agreement.sentences == len(lines) == (300 if which == "tiny" else 150)
    assert agreement.differ == [], [lines[i] for i in agreement.differ]
    assert agreement.equal >= 0.95 * len(lines), agreement  # near ties are rare, not the rule
    assert any(len(h[0].ids) > 3 for h in engine.decode(sources[:20], Search()))


@torch.no_grad()
def test_top2_margin_is_the_gap_between_mha_best_two_logits_where_outputs_part(loaded):
    model, tokenizer, _ = loaded
    src_ids = torch.tensor(tokenizer.encode_src([SENTENCES[2]]))  # (1, S)
    ours = [5, 6, 7]
    logits = model(src_ids, torch.tensor([[2, 5, 6]]))[0, -1]  # the choice after "5 6"
    top = logits.topk(2).values
    assert top2_margin(model, src_ids, ours, [5, 6, 9]) == pytest.approx(float(top[0] - top[1]))
    assert top2_margin(model, src_ids, ours, [5, 6]) == pytest.approx(float(top[0] - top[1]))
    first = model(src_ids, torch.tensor([[2]]))[0, -1].topk(2).values
    assert top2_margin(model, src_ids, ours, [8]) == pytest.approx(float(first[0] - first[1]))



def test_engine_commands_translate_and_score_like_mha(ct2, run_copy, loaded, small_corpus):
    assert invoke("export", run_copy, "--to", "ctranslate2").exit_code == 0
    lines = [SENTENCES[0], "", SENTENCES[1], SENTENCES[2]]
    ours = list(translate_lines(MhaEngine(*loaded[:2], loaded[2].decode), lines, batch_size=2,
                                beam=1))
    result = invoke("translate", run_copy, "--engine", "ctranslate2", "--batch-size", "2", *lines)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ours and ours[1] == ""
    beam = invoke("translate", run_copy, "--engine", "ctranslate2", "--beam", "3", *lines)
    assert beam.exit_code == 0 and len(beam.stdout.splitlines()) == 4
    files = []
    for lang in ("de", "en"):
        lines = (small_corpus / f"val.{lang}").read_text(encoding="utf-8").splitlines()[:40]
        files.append(run_copy / f"few.{lang}")
        files[-1].write_text("\n".join(lines) + "\n", encoding="utf-8")
    scoring = ["eval", run_copy, "--src-file", files[0], "--ref-file", files[1], "--json"]
    theirs = json.loads(invoke(*scoring, "--engine", "ctranslate2").stdout)
    mine = json.loads(invoke(*scoring).stdout)
    assert theirs["sentences"] == mine["sentences"] == 40
    assert theirs["bleu"] == pytest.approx(mine["bleu"], abs=0.5)


def test_int8_export_is_smaller_and_translates(ct2, tiny_run, exported, tmp_path):
    folder = export(tiny_run, output=tmp_path / "int8", quantization="int8")
    assert (folder / "model.bin").stat().st_size < 0.6 * (exported / "model.bin").stat().st_size
    out = list(translate_lines(CTranslate2Engine(folder, threads=1), SENTENCES, batch_size=4,
                               beam=1))
    assert len(out) == 3 and all(out)


def test_readme_script_translates_like_the_engine(ct2, exported):
    readme = (exported / "README.md").read_text()
    script = re.search(r"```python\n(.*?)```", readme, re.DOTALL)[1]
    done = subprocess.run([sys.executable, "-c", script], check=False, cwd=exported, text=True,
                          input="\n".join(SENTENCES) + "\n", capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    engine = CTranslate2Engine(exported, threads=1)
    alone = [translate_chunk(engine, [line], batch_size=1, beam=1)[0] for line in SENTENCES]
    assert done.stdout.splitlines() == alone


def test_bad_export_requests_are_one_error_line_and_write_nothing(ct2, run_copy, tmp_path):
    unsupported = [name for name, value in QUANTIZATIONS.items()
                   if value not in ct2.get_supported_compute_types("cpu")]
    export_to = ["export", run_copy, "--to", "ctranslate2"]
    (tmp_path / "empty").mkdir()
    cases = [
        (["export", tmp_path / "empty", "--to", "ctranslate2"], "has no checkpoints/best.pt"),
        (["export", tmp_path / "nowhere", "--to", "ctranslate2"], "does not exist"),
        (["export", run_copy, "--to", "onnx"], "--to must be one of ctranslate2"),
        ([*export_to, "--quantization", "int4"], "--quantization must be one of"),
        (["translate", run_copy, "--engine", "ctranslate2", "Hallo"], "no exported model"),
        (["translate", run_copy, "--engine", "onnx", "Hallo"], "--engine must be one of"),
    ]
    cases += [([*export_to, "--quantization", name], "not supported by CTranslate2 on this CPU")
              for name in unsupported[:1]]
    (run_copy / "ctranslate2").mkdir()
    (run_copy / "ctranslate2" / "keep.txt").write_text("mine")
    cases.append((export_to, "exists and is not empty (pass --force"))
    for args, message in cases:
        assert_user_error(run_copy, args, message)
    forced = invoke(*export_to, "--force")
    assert forced.exit_code == 0, forced.output
    assert not (run_copy / "ctranslate2" / "keep.txt").exists()
    assert not (tmp_path / "nowhere").exists()


def test_without_ctranslate2_export_says_how_to_install_it(run_copy, monkeypatch):
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # import ctranslate2 -> ImportError
    for args in (["export", run_copy, "--to", "ctranslate2"],
                 ["translate", run_copy, "--engine", "ctranslate2", "Hallo"]):
        assert_user_error(run_copy, args, "pip install 'mha[export]'")


def _test_lines(run: Path) -> list[str]:
    from mha.data.prepare import load_prepared

    return list(load_prepared(run).splits["test"]["src"])


def test_a_model_without_the_attention_scale_is_refused(ct2, tiny_run):
    model, tokenizer, cfg = load_model(tiny_run, "best", "cpu")
    model.cfg = dataclasses.replace(cfg.model, attention_scale=False)
    with pytest.raises(ExportError, match="model.attention_scale is false"):
        build_spec(model, tokenizer, ct2)
