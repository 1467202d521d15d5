"""`mha heads`: single-head ablation equals a mask set by hand, the pruning curve runs from every
head to none (an empty output scores 0, not an error), roles over padded batches equal roles
sentence by sentence, the picture is a PNG, equal runs write equal files and tables, bad input is
one error line."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import assert_user_error, invoke

from mha.inference.heads import (
    all_heads,
    can_remove,
    greedy_bleu,
    loss_batches,
    set_masks,
    spearman,
    summed_token_loss,
)
from mha.inference.roles import ROLES, THRESHOLD, Vocabulary, measure_roles, role_cell
from mha.inference.run import load_model
from mha.inference.translate import MhaEngine, translate_lines

pytestmark = pytest.mark.usefixtures("_one_thread")


@pytest.fixture(scope="module")
def measured(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    import shutil

    run = Path(shutil.copytree(tiny_run, tmp_path_factory.mktemp("heads") / "run"))
    result = invoke("heads", run, "--limit", "20", "--device", "cpu")
    assert result.exit_code == 0, result.output
    return run, json.loads((run / "heads.json").read_text()), result.output


def by_hand_loss(run: Path, mask: dict[str, torch.Tensor]) -> float:
    """Mean token cross-entropy of the first 20 val pairs with head masks set directly."""
    model, _, cfg = load_model(run, "best", "cpu")
    for layer, attention in enumerate(model.decoder):
        attention.cross_attn.head_mask = mask.get(f"cross{layer}")
    batches = loss_batches(run, "val", 20, cfg.decode.batch_size, model.cfg.max_tokens,
                           torch.device("cpu"))
    with torch.no_grad():
        sums = [summed_token_loss(model, batch) for batch in batches]
    return sum(loss.item() for loss, _ in sums) / sum(tokens for _, tokens in sums)


def test_one_head_removed_equals_the_mask_set_by_hand(measured):
    run, report, _ = measured
    record = next(r for r in report["heads"]
                  if (r["kind"], r["layer"], r["head"]) == ("cross", 0, 1))
    assert record["val_loss"] == pytest.approx(
        by_hand_loss(run, {"cross0": torch.tensor([1.0, 0.0])}), abs=1e-5)
    assert report["baseline"]["val_loss"] == pytest.approx(by_hand_loss(run, {}), abs=1e-5)
    assert record["val_loss"] != pytest.approx(report["baseline"]["val_loss"], abs=1e-5)
    assert record["loss_rise"] == pytest.approx(
        record["val_loss"] - report["baseline"]["val_loss"], abs=1e-5)


def test_every_head_of_every_kind_is_measured(measured, loaded):
    _, report, _ = measured
    heads = [(r["kind"], r["layer"], r["head"]) for r in report["heads"]]
    assert heads == all_heads(loaded[0])
    assert {kind for kind, _, _ in heads} == {"encoder", "decoder", "cross"}
    assert sorted(r["rank"] for r in report["heads"]) == list(range(1, len(heads) + 1))
    assert all(r["grad_importance"] >= 0 for r in report["heads"])
    assert report["sentences"] == 20 and report["split"] == "val"


def test_the_pruning_curve_runs_from_every_head_to_none(measured, tiny_run: Path):
    run, report, _ = measured
    curve, total = report["pruning"], len(report["heads"])
    assert [step["kept"] for step in curve] == list(range(total, -1, -1))
    assert curve[0]["bleu"] == report["baseline"]["val_bleu"]
    model, tokenizer, cfg = load_model(tiny_run, "best", "cpu")
    set_masks(model, all_heads(model))
    sources = ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee."] * 10
    assert curve[-1]["bleu"] == pytest.approx(
        greedy_bleu(model, tokenizer, cfg, *[lines[:20] for lines in _val(run)]), abs=1e-5)
    cfg = replace(cfg, decode=replace(cfg.decode, max_len_a=0.0, max_len_b=0))
    engine = MhaEngine(model, tokenizer, cfg.decode)
    assert set(translate_lines(engine, sources, batch_size=8, beam=1)) == {""}
    assert greedy_bleu(model, tokenizer, cfg, sources, sources) == 0.0  # empty outputs: BLEU 0


def _val(run: Path) -> tuple[list[str], list[str]]:
    from mha.inference.evaluate import eval_set

    sources, references, _ = eval_set(run, "val")
    return sources, references


def test_roles_over_padded_batches_equal_them_sentence_by_sentence(measured, loaded):
    run, report, _ = measured
    model, tokenizer, _ = loaded
    alone = loss_batches(run, "val", 20, 1, model.cfg.max_tokens, torch.device("cpu"))
    expected = measure_roles(model, alone, Vocabulary.of_run(run, tokenizer))
    for r in report["heads"]:
        want = expected[r["kind"], r["layer"], r["head"]]
        assert list(r["roles"]) == list(ROLES[r["kind"]])
        assert r["roles"] == pytest.approx(want["roles"], abs=1e-5)
        assert r["entropy"] == pytest.approx(want["entropy"], abs=1e-5) and r["entropy"] > 0
        assert r["role"] == want["role"]
        assert r["role"] is None or r["roles"][r["role"]] >= THRESHOLD


def test_the_table_shows_roles_and_the_picture_is_a_png(measured):
    from PIL import Image

    run, report, output = measured
    for r in report["heads"]:
        assert any(line.startswith(f"{r['kind']:<8} {r['layer']:>5} {r['head']:>4} ")
                   and line.endswith(role_cell(r)) for line in output.splitlines())
    assert f"written to {run / 'heads.json'} and {run / 'heads.png'}" in output
    with Image.open(run / "heads.png") as picture:
        picture.verify()
        assert picture.format == "PNG" and min(picture.size) >= 400


def test_two_runs_write_the_same_file(measured):
    run, _, output = measured
    first = (run / "heads.json").read_bytes()
    again = invoke("heads", run, "--limit", "20", "--device", "cpu")
    assert again.exit_code == 0
    assert (run / "heads.json").read_bytes() == first
    assert again.output == output  # the same table


def test_can_remove_counts_heads_before_the_first_drop():
    curve = [{"kept": 3, "bleu": 30.0}, {"kept": 2, "bleu": 29.8}, {"kept": 1, "bleu": 29.2},
             {"kept": 0, "bleu": 0.0}]
    assert can_remove(curve, 30.0, 0.5) == 1
    assert can_remove(curve, 30.0, 1.0) == 2
    assert can_remove(curve[:3], 30.0, 1.0) == 2


def test_spearman_by_hand():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert spearman([1, 1, 1], [1, 2, 3]) is None


@pytest.mark.parametrize("limit", ["0", "-3"])
def test_a_limit_below_one_is_one_error_line(run_copy: Path, limit: str):
    assert_user_error(run_copy, ["heads", run_copy, "--limit", limit], "--limit must be at least 1")


def test_a_run_without_checkpoints_is_one_error_line(run_copy: Path):
    import shutil

    shutil.rmtree(run_copy / "checkpoints")
    assert_user_error(run_copy, ["heads", run_copy, "--device", "cpu"], "checkpoint")
