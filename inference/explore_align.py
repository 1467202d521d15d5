"""The explore page's alignment parts (`mha align`'s RUN/align.json): the per-head AER figure,
each sentence's word links, and the training tab's alignment against updates.

The JSON gets, when RUN/align.json exists and passes the check (AlignReport):
    alignment   that report's checked fields (what, reference, split, layers, best, best_layer)
and each sentence gets
    links       [[i, j], ...]: Pharaoh links (source word i, target word j), one per output word,
                from the page's own cross-attention, the best layer's heads averaged
                (word_align.links on the model's translation, not eflomal's links).
A file that does not parse or fails the check is left out with one warning: no figure, no links.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from mha.inference.aer import sure_only
from mha.inference.eflomal_links import cache_paths
from mha.inference.reports import ReportError, read_report
from mha.inference.word_align import links

log = logging.getLogger(__name__)

ALIGN_FILE = "align.json"


class _Checked(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


class Scores(_Checked):
    aer: float | None
    precision: float | None
    recall: float | None


class Methods(_Checked):
    naive: Scores
    shift: Scores


class HeadScores(Methods):
    head: int = Field(ge=0)


class LayerScores(_Checked):
    layer: int = Field(ge=0)
    heads: list[HeadScores]
    mean: Methods


class Best(_Checked):
    layer: int = Field(ge=0)
    aer: float


class AlignReport(_Checked):
    split: str
    sentences: int = Field(ge=1)
    checkpoint_step: int
    reference: str
    what: str
    layers: list[LayerScores]
    best: dict[str, Best | None]
    best_layer: int | None


def stored_alignment(run_dir: Path, model: dict) -> dict | None:
    """RUN/align.json, checked; None, with one warning, when it cannot be read, fails the check
    or does not fit `model` (the page's model entry); None, silently, when there is none."""
    path = Path(run_dir) / ALIGN_FILE
    if not path.is_file():
        return None
    try:
        report = read_report(path, AlignReport)
    except ReportError as error:
        return _skip(path, str(error))
    shape = [(entry.layer, len(entry.heads)) for entry in report.layers]
    expected = [(layer, model["heads"]) for layer in range(model["decoder_layers"])]
    if shape != expected or (report.best_layer is not None
                             and not 0 <= report.best_layer < model["decoder_layers"]):
        return _skip(path, f"it scores other heads than this model's {model['decoder_layers']} "
                     f"decoder layers of {model['heads']} heads")
    return report.model_dump()


def _skip(path: Path, problem: str) -> None:
    log.warning("%s: %s; the page leaves out the alignment figures (rerun `mha align %s`)",
                path, problem, path.parent)


def add_alignment(data: dict, run_dir: Path) -> None:
    """Put `alignment` and each sentence's `links` into the page's `data` (module docstring);
    nothing when the run has no usable align.json."""
    report = stored_alignment(run_dir, data["model"])
    if report is None:
        return
    data["alignment"] = report
    add_links(data["sentences"], links_layer(report, data["model"]))


def links_layer(report: dict, model: dict) -> int:
    """The layer whose heads give the page's word links: the report's best, else the
    second-to-last."""
    best = report["best_layer"]
    return best if best is not None else max(model["decoder_layers"] - 2, 0)


def add_links(sentences: list[dict], layer: int) -> None:
    """Each sentence's `links`, from its own cross-attention in `layer`, heads averaged."""
    for sentence in sentences:
        cross = torch.tensor(sentence["weights"]["cross"][layer])  # (H, T + 1, S + 1)
        found = links(cross, sentence["src"][:-1], sentence["tgt_out"][:-1])
        sentence["links"] = [[i, j] for i, j in found]


def alignment_by_step(run_dir: Path, sentences: list[dict],
                      cross_by_step: list[list[torch.Tensor]]) -> dict | None:
    """Per stored step, the share of the watched sentences' target words whose best-layer link
    (heads averaged, reference targets) is one of eflomal's links for that sentence; None unless
    RUN/align.json scored the val split (whose first sentences are the watched ones) and its
    eflomal links are kept. cross_by_step: per step, per sentence (L, H, T + 1, S + 1)."""
    path = Path(run_dir) / ALIGN_FILE
    try:
        report = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # the page's own check (stored_alignment) warns once
    links_path = cache_paths(run_dir, "val")[0]
    layer = report.get("best_layer") if isinstance(report, dict) else None
    if report.get("split") != "val" or not isinstance(layer, int) or not links_path.is_file():
        return None
    lines = links_path.read_text(encoding="utf-8").splitlines()[:len(sentences)]
    if len(lines) < len(sentences):
        return None
    reference = [r.sure for r in sure_only(lines)]
    shares = []
    for step in cross_by_step:
        agree = words = 0
        for sentence, cross, gold in zip(sentences, step, reference):
            found = links(cross[layer], sentence["src"][:-1], sentence["tgt_out"][:-1])
            agree += sum(link in gold for link in found)
            words += len(found)
        shares.append(round(agree / words, 4) if words else None)
    return {"agreement": shares, "layer": layer,
            "label": f"share of target words linked as eflomal links them (layer {layer + 1}, "
                     "heads averaged): agreement with eflomal, not accuracy"}
