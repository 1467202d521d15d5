"""The explore page's training tab: the watched sentences' attention at every validation.

`train.watch` keeps, at each validation, every head's attention over a few validation sentences
(RUN/attention_history, inference/history.py). The page gets them as they are stored, 8-bit, and
draws any step, kind, layer and head: a learner drags a slider and sees heads go from uniform to
sharp. The JSON's `history`:
    sentences   [{src, tgt_in, tgt_out}] as stored (S, T pieces)
    steps       the updates validated at, ascending
    weights     per step, per sentence {encoder, decoder, cross}: base64 of uint8 (L, H, Tq, Tk),
                encoder (S, S), decoder (T, T), cross (T, S); weight = byte / levels
    levels      255
    entropy     {kind: per step}: the mean row entropy in bits (the page's per-head figure),
                averaged over the kind's heads and layers and then over the sentences
    uniform     {kind: bits}: the same figure for uniform attention (every allowed key alike)
    alignment   null, or {agreement: per step, layer, label}: explore_align.alignment_by_step,
                when RUN/align.json scored the val split and eflomal's val links are kept
A history that cannot be read or does not fit the model is left out with one warning.
"""

from __future__ import annotations

import base64
import logging
import pickle
from pathlib import Path

import torch
from torch import Tensor

from mha.data.files import DataError
from mha.inference.explore_align import alignment_by_step
from mha.inference.history import FOLDER, LEVELS, read_history

log = logging.getLogger(__name__)

DECIMALS = 4
KINDS = ("encoder", "decoder", "cross")
# what a history file can raise when cut short or overwritten: torch.load's unpickling, its zip
# reader (RuntimeError), a missing or garbled sentences.json, a state without its keys
UNREADABLE = (OSError, ValueError, RuntimeError, EOFError, KeyError, TypeError, AttributeError,
              pickle.UnpicklingError)


def check_history(run_dir: Path, wanted: bool | None) -> None:
    """`--history` on a run that kept none: raises DataError, before the model loads."""
    if wanted and not (Path(run_dir) / FOLDER).is_dir():
        raise DataError(f"{run_dir} has no {FOLDER}/ to show: it is kept while training with "
                        "train.watch N (N > 0), or leave out --history")


def history_data(run_dir: Path, model: dict, wanted: bool | None = None) -> dict:
    """{"history": ...} for the page (module docstring), or {} when `wanted` is False, when the
    run kept no history (and `wanted` is None), or, with one warning, when it cannot be read,
    holds no step or does not fit `model` (the page's model entry)."""
    folder = Path(run_dir) / FOLDER
    if wanted is False or not folder.is_dir():
        return {}
    try:
        sentences, history = read_history(run_dir)
        problem = _misfit(sentences, history, model)
    except UNREADABLE as error:
        problem = f"cannot be read ({type(error).__name__}: {error})"
    if problem:
        log.warning("%s: %s; the page leaves out the training tab", folder,
                    problem.replace("\n", " "))
        return {}
    steps = sorted(history)
    by_kind = [[_by_kind(weights) for weights in history[step]] for step in steps]
    uniform = [_by_kind(_uniform(sentence, model)) for sentence in sentences]
    return {"history": {
        "sentences": [{key: s[key] for key in ("src", "tgt_in", "tgt_out")} for s in sentences],
        "steps": steps,
        "weights": [[{kind: _base64(w) for kind, w in kinds.items()} for kinds in step]
                    for step in by_kind],
        "levels": LEVELS,
        "entropy": {kind: [_mean_entropy([kinds[kind] for kinds in step]) for step in by_kind]
                    for kind in KINDS},
        "uniform": {kind: _mean_entropy([kinds[kind] for kinds in uniform]) for kind in KINDS},
        "alignment": alignment_by_step(run_dir, sentences,
                                       [[kinds["cross"] for kinds in step] for step in by_kind]),
    }}


def _names(model: dict) -> dict[str, str]:
    """Recorder name -> kind, for every attention of `model`."""
    names = {f"encoder.{layer}.self_attn": "encoder" for layer in range(model["encoder_layers"])}
    for layer in range(model["decoder_layers"]):
        names |= {f"decoder.{layer}.self_attn": "decoder", f"decoder.{layer}.cross_attn": "cross"}
    return names


def _shapes(sentence: dict, model: dict) -> dict[str, tuple[int, int, int]]:
    S, T, H = len(sentence["src"]), len(sentence["tgt_in"]), model["heads"]
    keys = {"encoder": (S, S), "decoder": (T, T), "cross": (T, S)}
    return {name: (H, *keys[kind]) for name, kind in _names(model).items()}


def _misfit(sentences: list[dict], history: dict[int, list[dict]], model: dict) -> str:
    """What keeps the history off the page; "" when it fits."""
    if not history:
        return "it holds no step yet"
    if not all(isinstance(s, dict) and all(isinstance(s.get(key), list) for key in (
            "src", "tgt_in", "tgt_out")) for s in sentences):
        return "sentences.json does not list each sentence's src, tgt_in and tgt_out"
    for step, weights in sorted(history.items()):
        if len(weights) != len(sentences):
            return f"step {step} holds {len(weights)} sentences, sentences.json {len(sentences)}"
        for n, (sentence, kept) in enumerate(zip(sentences, weights)):
            expected = _shapes(sentence, model)
            found = {name: tuple(w.shape) for name, w in kept.items()}
            if found != expected:
                return (f"step {step}, sentence {n + 1}: its weights do not fit this model "
                        f"({len(found)} attentions, not {len(expected)}, or other shapes)")
    return ""


def _by_kind(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """{name: (H, Tq, Tk)} -> {kind: (L, H, Tq, Tk)}, layers in order."""
    grouped: dict[str, list[Tensor]] = {kind: [] for kind in KINDS}
    for name in sorted(weights, key=lambda name: int(name.split(".")[1])):
        kind = "encoder" if name.startswith("encoder") else (
            "cross" if name.endswith("cross_attn") else "decoder")
        grouped[kind].append(weights[name])
    return {kind: torch.stack(layers) for kind, layers in grouped.items()}


def _uniform(sentence: dict, model: dict) -> dict[str, Tensor]:
    """Uniform attention over the keys each row may see (the decoder's: itself and before)."""
    uniform = {}
    for name, (H, Tq, Tk) in _shapes(sentence, model).items():
        allowed = torch.ones(Tq, Tk)
        if name.endswith("self_attn") and name.startswith("decoder"):
            allowed = allowed.tril()
        uniform[name] = (allowed / allowed.sum(-1, keepdim=True)).expand(H, Tq, Tk)
    return uniform


def _mean_entropy(sentences: list[Tensor]) -> float:
    """Each (L, H, Tq, Tk): rows' entropy in bits (0 log 0 = 0), mean over rows, heads and
    layers; then the mean over sentences."""
    means = [-(w * torch.where(w > 0, w, 1.0).log2()).sum(-1).mean() for w in sentences]
    return round(float(torch.stack(means).mean()), DECIMALS)


def _base64(weights: Tensor) -> str:
    """(L, H, Tq, Tk) in [0, 1], as stored (multiples of 1/levels) -> base64 of its bytes."""
    quantised = (weights * LEVELS).round().to(torch.uint8).contiguous()
    return base64.b64encode(quantised.numpy().tobytes()).decode("ascii")
