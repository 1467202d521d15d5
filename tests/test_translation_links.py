"""`mha translate --alignments` and `mha eval --alignments` on the session's tiny run: the links
printed equal word_align.links on a teacher-forced pass made here, one sentence at a time."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import SENTENCES, assert_user_error, invoke

from mha.data.tokenizer import Tokenizer
from mha.inference.align import default_layer
from mha.inference.search import Search
from mha.inference.translate import MhaEngine
from mha.inference.word_align import links, pharaoh
from mha.model.attention import AttentionRecorder

pytestmark = pytest.mark.usefixtures("_one_thread")


def expected(loaded, run, text: str, beam: int = 1, nbest: int = 1, layer: int | None = None,
             shift: bool = False) -> list[str]:
    """Each hypothesis's links, from its own unpadded teacher-forced pass."""
    model, tokenizer, cfg = loaded
    layer = default_layer(run, len(model.decoder)) if layer is None else layer
    source = tokenizer.encode_src([text])[0]
    found = []
    for h in MhaEngine(model, tokenizer, cfg.decode).decode([source], Search(beam, nbest))[0]:
        with torch.no_grad(), AttentionRecorder(model) as recorded:
            model(torch.tensor([source]), torch.tensor([[Tokenizer.BOS, *h.ids]]))
        cross = recorded[f"decoder.{layer}.cross_attn"][0]  # (H, T + 1, S + 1)
        found.append(pharaoh(links(cross, tokenizer.src_pieces(text)[:-1],
                                   tokenizer.tgt_pieces(h.ids), shift=shift)))
    return found


def lines_of(*args) -> list[str]:
    result = invoke("translate", *args)
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


@pytest.mark.parametrize("options", [[], ["--shift-att"], ["--align-layer", "0"]])
def test_printed_links_equal_a_teacher_forced_pass(tiny_run, loaded, options):
    out = lines_of(tiny_run, "--alignments", *options, *SENTENCES, "")
    plain = lines_of(tiny_run, *SENTENCES, "")
    layer = 0 if "--align-layer" in options else None
    assert [line.split("\t")[0] for line in out] == plain
    for line, text in zip(out, SENTENCES):
        assert line.split("\t")[1] == expected(loaded, tiny_run, text, layer=layer,
                                               shift="--shift-att" in options)[0]
    assert out[-1] == "\t"  # a blank line: no text, no links


def test_nbest_lines_carry_their_own_links(tiny_run, loaded):
    out = lines_of(tiny_run, "--alignments", "--beam", "3", "--nbest", "3", *SENTENCES[:2])
    for i, text in enumerate(SENTENCES[:2]):
        fields = [line.split("\t") for line in out[3 * i:3 * i + 3]]
        assert [f[4] for f in fields] == expected(loaded, tiny_run, text, beam=3, nbest=3)
    objects = [json.loads(line) for line in lines_of(
        tiny_run, "--alignments", "--beam", "3", "--nbest", "3", "--json", *SENTENCES[:2])]
    assert [[e["alignments"] for e in o["nbest"]] for o in objects] == [
        [line.split("\t")[4] for line in out[3 * i:3 * i + 3]] for i in range(2)]
    assert [o["alignments"] for o in objects] == [out[0].split("\t")[4], out[3].split("\t")[4]]


def test_eval_writes_a_links_line_per_sentence(run_copy, tmp_path):
    src, ref = tmp_path / "src.de", tmp_path / "ref.en"
    src.write_text("\n".join(SENTENCES) + "\n")
    ref.write_text("A man rides a bike.\nTwo dogs play.\nA woman sits.\n")
    result = invoke("eval", run_copy, "--src-file", src, "--ref-file", ref, "--alignments",
                    "--device", "cpu")
    assert result.exit_code == 0, result.output
    [hyp_path] = (run_copy / "eval").glob("*.hyp")
    hypotheses = hyp_path.read_text().splitlines()
    rows = hyp_path.with_suffix(".align").read_text().splitlines()
    assert len(rows) == len(hypotheses) == len(SENTENCES)
    for row, source, hypothesis in zip(rows, SENTENCES, hypotheses):
        pairs = [tuple(map(int, link.split("-"))) for link in row.split()]
        assert all(0 <= i < len(source.split()) and 0 <= j < len(hypothesis.split())
                   for i, j in pairs)
        assert [j for _, j in pairs] == list(range(len(hypothesis.split())))


@pytest.mark.parametrize(("args", "message"), [
    (["--alignments", "--align-layer", "9"], "--align-layer must be a decoder layer, 0 to"),
    (["--alignments", "--align-layer", "-1"], "--align-layer must be a decoder layer"),
    (["--shift-att"], "add --alignments"),
    (["--alignments", "--attention", "x.png"], "--alignments print links"),
    (["--alignments", "--engine", "ctranslate2"], "returns only the attention fixed at export"),
    (["--alignments", "--ensemble", "other"], "leave out --ensemble"),
])
def test_bad_alignment_options(tiny_run, args, message):
    assert_user_error(tiny_run, ["translate", tiny_run, *args, SENTENCES[0]], message)
    if "--attention" not in args:  # eval draws no picture
        assert_user_error(tiny_run, ["eval", tiny_run, *args], message)
