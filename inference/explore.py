"""`mha explore`: one self-contained HTML page that shows a run's attention, sentence by sentence.

For each sentence: translate it (greedy, or beam search recording the live prefixes), then one
teacher-forced pass over BOS + output asks for every attention weight: encoder self-attention,
decoder masked self-attention and encoder-decoder attention, each layer and head. The page
(explore_page/: HTML, CSS and plain JavaScript, joined here) reads them from an inline JSON block
and needs nothing from any server.

The JSON (`format` 1): run, checkpoint, beam, model {d_model, heads, encoder_layers,
decoder_layers}, warnings (the unknown characters' warning, as the CLI words it, or none) and
sentences, each with
    text, translation; src (S labels: source pieces and EOS); tgt_in (T labels: BOS and output);
    tgt_out (T labels: output and EOS); weights {encoder (L, H, S, S), decoder (L, H, T, T),
    cross (L, H, T, S)}, 4 decimals; steps: T of {chosen, candidates [[piece, p] x 5] and,
    with a beam, beams [[text, log-probability], ...]}.
Row t of decoder and cross weights is the position that reads tgt_in[t] and predicts tgt_out[t].
An empty line is shown as the model sees it, EOS alone (`mha translate` skips such lines).

When the run holds RUN/heads.json (`mha heads`), the JSON also has checkpoint_step (the page's
checkpoint) and heads: that report's checked fields (HeadReport), which the page shows beside
each head. A file that does not parse, fails the check or describes another model's heads is
left out with one warning.
`mha serve` serves the page in live mode (live.js added: a text box) with the run's parts of the
JSON (add_run_data) and gives each typed sentence's part (POST /explore), which joins the page's.

Two more tabs come with their own keys: `history` (the training tab: RUN/attention_history as
train.watch kept it, explore_history.py; on by default when the run has one) and `embeddings`
(the model's embedding tables, int8, searched in the page: explore_embeddings.py); with
RUN/align.json (`mha align`), `alignment` and each sentence's `links` (explore_align.py).
"""

from __future__ import annotations

import html
import json
import logging
import re
from importlib.resources import files
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from mha.configs.schema import DecodeConfig
from mha.data.files import DataError, atomic_write
from mha.data.tokenizer import Tokenizer
from mha.inference import checkpoint
from mha.inference.explore_align import add_alignment
from mha.inference.explore_embeddings import embedding_data
from mha.inference.explore_history import check_history, history_data
from mha.inference.pictures import attention_weights
from mha.inference.reports import ReportError, read_report
from mha.inference.run import load_model
from mha.inference.translate import unknown_message
from mha.model.transformer import Transformer

log = logging.getLogger(__name__)

MAX_SENTENCES = 100
DECIMALS = 4
CANDIDATES = 5
PAGE_FILES = ("page.html", "page.css", "figures.js", "importance.js", "history.js",
              "embeddings.js", "align.js", "page.js")  # page.js last: it starts the page
HEADS_FILE = "heads.json"
LIVE_FILE = "live.js"  # the live page's data source: the text box and POST /explore


def check_request(texts: list[str], output: Path) -> None:
    """Refuse what would fail later, before the model loads: raises DataError for no sentence,
    more than MAX_SENTENCES, or an output path whose folder does not exist."""
    if not texts:
        raise DataError("no sentence to explore: give TEXT arguments or --input FILE")
    if len(texts) > MAX_SENTENCES:
        raise DataError(f"{len(texts)} sentences, more than the page's limit of {MAX_SENTENCES}: "
                        "explore a few at a time")
    if not output.parent.is_dir():
        raise DataError(f"cannot write {output}: folder {output.parent} does not exist")


def collect(model: Transformer, tokenizer: Tokenizer, text: str, decode_cfg: DecodeConfig,
            beam: int = 1) -> dict:
    """One sentence's entry of the page's JSON (see the module docstring)."""
    beams: list[list] = []

    def record(tokens: Tensor, scores: Tensor) -> None:  # a beam step's live prefixes
        live = [[tokenizer.decode_tgt(ids), round(score, DECIMALS)]
                for ids, score in zip(tokens.tolist(), scores[0].tolist()) if score > -1e30]
        beams.append(sorted(live, key=lambda item: -item[1]))

    seen = attention_weights(model, tokenizer, text, decode_cfg, beam, on_step=record)
    steps = _steps(tokenizer, seen.logits, seen.tgt_out_pieces)
    for step, live in zip(steps, beams):
        step["beams"] = live
    return {
        "text": text, "translation": seen.translation, "src": seen.src_pieces,
        "tgt_in": seen.tgt_in_pieces, "tgt_out": seen.tgt_out_pieces,
        "weights": {
            "encoder": [_rounded(w) for w in seen.encoder],  # L x (H, S, S)
            "decoder": [_rounded(w) for w in seen.self],  # L x (H, T, T)
            "cross": [_rounded(w) for w in seen.cross],  # L x (H, T, S)
        },
        "steps": steps,
    }


def _steps(tokenizer: Tokenizer, logits: Tensor, tgt_out: list[str]) -> list[dict]:
    """Per output step: the chosen piece and the top candidates with their probabilities.
    logits (T, V), from the teacher-forced pass: step t's distribution given tgt_in[:t + 1]."""
    probs = logits.double().softmax(dim=-1)  # (T, V)
    top = probs.topk(min(CANDIDATES, probs.shape[-1]), dim=-1)
    steps = []
    for t, (p, ids) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
        pieces = tokenizer.tgt_pieces(ids)
        steps.append({"chosen": tgt_out[t],
                      "candidates": [[piece, round(q, DECIMALS)] for piece, q in zip(pieces, p)]})
    return steps


def _rounded(weights: Tensor) -> list:
    """(H, Tq, Tk) -> nested lists of floats with DECIMALS decimals; 0 and 1 as ints, shorter
    in JSON (the decoder's masked half is all zeros)."""
    scale = 10 ** DECIMALS
    heads = (weights.double() * scale).round().div(scale).tolist()
    return [[[int(w) if w in (0.0, 1.0) else w for w in row] for row in head] for head in heads]


class _Checked(BaseModel):
    """Fields as `mha heads` writes them; other keys are dropped, NaN and infinity refused."""

    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


class HeadRecord(_Checked):
    kind: Literal["encoder", "decoder", "cross"]
    layer: int = Field(ge=0)
    head: int = Field(ge=0)
    val_loss: float
    val_bleu: float
    bleu_drop: float
    loss_rise: float
    grad_importance: float
    rank: int = Field(ge=1)
    roles: dict[str, float | None] | None = None  # Voita et al.'s roles, where heads.json has them
    entropy: float | None = None
    role: str | None = None


class Baseline(_Checked):
    val_loss: float
    val_bleu: float


class PruningStep(_Checked):
    kept: int = Field(ge=0)
    bleu: float


class HeadReport(_Checked):
    split: str
    sentences: int = Field(ge=1)
    checkpoint: str
    checkpoint_step: int
    baseline: Baseline
    heads: list[HeadRecord]
    pruning: list[PruningStep]
    can_remove: dict[str, int]
    spearman: float | None


def head_figures(run_dir: Path, which: str, model: dict) -> dict:
    """The page's checkpoint_step and heads (RUN/heads.json, checked), or {} when the run has no
    heads.json or one that `stored_heads` refuses. A warning when its figures were measured on
    another checkpoint than `which`, which the page also shows."""
    heads = stored_heads(Path(run_dir) / HEADS_FILE, model)
    if heads is None:
        return {}
    step = checkpoint.load(checkpoint.resolve(Path(run_dir), which))["step"]
    if heads["checkpoint_step"] != step:
        log.warning("%s was measured on the checkpoint of step %s; the page shows step %s "
                    "(rerun `mha heads %s`)", Path(run_dir) / HEADS_FILE,
                    heads["checkpoint_step"], step, run_dir)
    return {"checkpoint_step": step, "heads": heads}


def stored_heads(path: Path, model: dict) -> dict | None:
    """heads.json at `path`, checked (HeadReport); None, with one warning, when it cannot be
    read, fails the check or does not list exactly the heads of `model` (the page's model
    entry); None, silently, when there is none."""
    if not path.is_file():
        return None
    try:
        report = read_report(path, HeadReport)
    except ReportError as error:
        return _skip(path, str(error))
    expected = [(kind, layer, head) for kind, layers in (
        ("encoder", model["encoder_layers"]), ("decoder", model["decoder_layers"]),
        ("cross", model["decoder_layers"])) for layer in range(layers)
        for head in range(model["heads"])]
    found = [(r.kind, r.layer, r.head) for r in report.heads]
    if sorted(found) != sorted(expected):
        return _skip(path, f"it lists {len(found)} heads, not this model's {len(expected)} "
                     f"({model['encoder_layers']} encoder and {model['decoder_layers']} decoder "
                     f"layers of {model['heads']} heads)")
    return report.model_dump()


def _skip(path: Path, problem: str) -> None:
    log.warning("%s: %s; the page leaves out the head figures (rerun `mha heads %s`)",
                path, problem, path.parent)


def page_html(data: dict, title: str = "mha explore", *, live: bool = False) -> str:
    """The page: HTML with its CSS, JavaScript and `data` (as JSON) inline; `live` adds the
    text box that asks `mha serve` for each typed sentence's JSON."""
    folder = files("mha.inference") / "explore_page"
    template, css, *scripts = (folder.joinpath(name).read_text(encoding="utf-8")
                               for name in PAGE_FILES + ((LIVE_FILE,) if live else ()))
    # "<" only occurs inside JSON strings, where \u003c is the same character; so no
    # "</script>" in a sentence can end the block early
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")
    parts = {"title": html.escape(title), "css": css, "js": "\n".join(scripts), "data": payload}
    pieces = re.split(r"\{\{(title|css|js|data)\}\}", template)  # odd items are marker names
    return "".join(parts[piece] if i % 2 else piece for i, piece in enumerate(pieces))


def explore(
    run_dir: Path, texts: list[str], output: Path, *, which: str = "best", beam: int | None = None,
    device: str = "auto", name: str = "the sentences", history: bool | None = None,
) -> dict:
    """Write the page for `texts` to `output` (atomically); returns its data. Characters the
    tokenizer lacks are named in one warning, as `mha translate` does (`name` says where from).
    `history`: the training tab; None: when the run kept an attention history.

    Raises DataError for a bad request (see check_request; `history` True on a run without an
    attention history), CheckpointError for a folder that holds no usable run.
    """
    checkpoint.resolve(Path(run_dir), which)  # a folder that is not a run fails first, and fast
    check_request(texts, output)
    check_history(run_dir, history)
    model, tokenizer, cfg = load_model(run_dir, which, device)
    data = page_data(model, tokenizer, cfg.decode, texts, run_dir=run_dir, which=which,
                     beam=beam or cfg.decode.beam, name=name)
    add_run_data(data, model, tokenizer, run_dir=run_dir, which=which, history=history)
    for warning in data["warnings"]:
        log.warning("%s", warning)
    page = page_html(data, f"mha explore: {run_dir}").encode("utf-8")
    atomic_write(output, lambda file: file.write(page))
    return data


def add_run_data(data: dict, model: Transformer, tokenizer: Tokenizer, *, run_dir: Path,
                 which: str, history: bool | None = None) -> None:
    """The parts of the page that come from the run, not from its sentences: the stored head
    figures, the alignment report (and the sentences' word links), the training tab, the
    embeddings. `mha explore` and `mha serve`'s live page both add them here."""
    data.update(head_figures(run_dir, which, data["model"]))
    add_alignment(data, run_dir)
    data.update(history_data(run_dir, data["model"], history))
    data.update(embedding_data(model, tokenizer))


def page_data(model: Transformer, tokenizer: Tokenizer, decode_cfg: DecodeConfig,
              texts: list[str], *, run_dir: Path, which: str, beam: int, name: str) -> dict:
    """The page's JSON for `texts` (see the module docstring); `name` says where they came from
    in the unknown characters' warning. `mha explore` and `mha serve` both build it here."""
    unknown = tokenizer.unknown_characters(texts)
    m = model.cfg
    return {
        "format": 1, "run": str(run_dir), "checkpoint": which, "beam": beam,
        "model": {"d_model": m.d_model, "heads": m.heads, "encoder_layers": m.encoder_layers,
                  "decoder_layers": m.decoder_layers},
        "warnings": [unknown_message(unknown, name)] if unknown else [],
        "sentences": [collect(model, tokenizer, text, decode_cfg, beam) for text in texts],
    }
