"""The `mha explore` page's numbers against independent computations, in a real browser: the
attention weights it holds against each attention module's weights recomputed by hand from the
inputs it received, and its per-head figures against the legend's definitions in numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import KINDS, TEXTS, numpy_figures, show, state

from mha.data.tokenizer import Tokenizer
from mha.model.attention import MultiHeadAttention
from mha.model.decode import greedy
from mha.model.transformer import Transformer

pytestmark = pytest.mark.usefixtures("_one_thread")  # one torch thread: the cores are shared


def model_attention(model: Transformer, source: list[int], output: list[int]) -> dict:
    """Every attention module's weights, recomputed by hand from the inputs it received in a
    plain forward pass (which takes the fast path, without weights): kind -> L x (H, Tq, Tk)."""
    seen = {kind: [] for kind in KINDS}
    kind_of = {"encoder.self_attn": "encoder", "decoder.self_attn": "decoder",
               "decoder.cross_attn": "cross"}

    def capture(name: str):
        def hook(module: MultiHeadAttention, args: tuple, kwargs: dict) -> None:
            query, key = args[0], args[1]
            q = module.w_q(query).unflatten(-1, (module.num_heads, module.d_k)).transpose(1, 2)
            k = module.w_k(key).unflatten(-1, (module.num_heads, module.d_k)).transpose(1, 2)
            scores = q @ k.transpose(-2, -1) / math.sqrt(module.d_k)  # (1, H, Tq, Tk)
            if kwargs.get("causal"):
                scores = scores.masked_fill(torch.ones_like(scores[0, 0]).triu(1).bool(), -math.inf)
            stack, _, attention = name.split(".")  # e.g. decoder.0.cross_attn
            seen[kind_of[f"{stack}.{attention}"]].append(scores.softmax(dim=-1)[0])
        return hook

    handles = [module.register_forward_pre_hook(capture(name), with_kwargs=True)
               for name, module in model.named_modules() if isinstance(module, MultiHeadAttention)]
    try:
        with torch.no_grad():
            model(torch.tensor([source]), torch.tensor([[Tokenizer.BOS, *output]]))
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_the_page_holds_the_models_own_weights(explored, loaded, open_page):
    model, tokenizer, _ = loaded
    opened = open_page(explored)
    sentences = state(opened, "data.sentences")
    for text, held in zip(TEXTS, sentences):
        source = tokenizer.encode_src([text])[0] if text else [Tokenizer.EOS]
        output = greedy(model, torch.tensor([source]), bos=Tokenizer.BOS, eos=Tokenizer.EOS)[0].ids
        assert held["tgt_in"] == tokenizer.tgt_pieces([Tokenizer.BOS, *output])
        reference = model_attention(model, source, output)
        for kind in KINDS:
            page_weights = np.array(held["weights"][kind])  # (L, H, Tq, Tk)
            expected = torch.stack(reference[kind]).numpy()
            assert page_weights.shape == expected.shape
            assert np.abs(page_weights - expected).max() <= 1e-4
            assert np.abs(page_weights.sum(axis=-1) - 1).max() <= 2e-3


def word_groups(pieces: list[str]) -> list[list[int]]:
    """The legend's rule: a piece starting with U+2581 or a special token starts a word."""
    specials = {"<s>", "</s>", "<pad>"}
    groups: list[list[int]] = []
    for i, piece in enumerate(pieces):
        if i == 0 or piece.startswith("\u2581") or piece in specials or pieces[i - 1] in specials:
            groups.append([i])
        else:
            groups[-1].append(i)
    return groups


@pytest.mark.parametrize("merge", [False, True])
def test_per_head_figures_equal_numpy(explored, open_page, merge):
    opened = open_page(explored)
    rows_of = {"encoder": "src", "decoder": "tgt_out", "cross": "tgt_out"}
    cols_of = {"encoder": "src", "decoder": "tgt_in", "cross": "src"}
    for sentence in (2, 3):
        held = state(opened, f"data.sentences[{sentence}]")
        for kind in KINDS:
            show(opened, sentence=sentence, kind=kind, merge=merge)
            weights = np.array(held["weights"][kind])  # (L, H, R, C)
            if merge:
                rows, cols = word_groups(held[rows_of[kind]]), word_groups(held[cols_of[kind]])
                weights = np.stack([np.stack([weights[..., r, :][..., c].sum(-1).mean(-1)
                                              for c in cols], -1) for r in rows], -2)
                assert len(state(opened, "current().cols")) == len(cols)
            expected = numpy_figures(weights, kind == "cross")
            shown = state(opened, "figures()")
            assert (shown["diagonal"] is None) == (kind != "cross")
            for name, values in expected.items():
                got = np.array(shown[name], dtype=float)  # null (one head) -> nan
                np.testing.assert_allclose(got, values, atol=1e-9, err_msg=f"{kind} {name}")
            if merge:
                assert np.abs(np.array(state(opened, "current().layers")) - weights).max() < 1e-9
