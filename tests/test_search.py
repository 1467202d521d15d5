"""The search itself (model/decode.py, model/sample.py): n-best lists and their scores, forced
prefixes, sampling; on small random models, whose outputs end at all lengths."""

from __future__ import annotations

import re

import pytest
import torch

from mha.configs.schema import ModelConfig
from mha.model.decode import beam_search, force_prefix, greedy
from mha.model.sample import Sampler, Sampling
from mha.model.transformer import Transformer

PAD, BOS, EOS, V = 0, 2, 3, 40
pytestmark = pytest.mark.usefixtures("_one_thread")
CFG = ModelConfig(d_model=32, heads=4, encoder_layers=2, decoder_layers=2, d_ff=64, dropout=0.0)
LIMITS = {"bos": BOS, "eos": EOS, "max_len_a": 1.0, "max_len_b": 6}


def make(seed: int = 0, ending: bool = False) -> Transformer:
    """A random model; `ending`: its logits flattened (x0.3) and EOS's raised (+1.5), so that
    hypotheses end at all lengths, some at their cap."""
    torch.manual_seed(seed)
    model = Transformer(CFG, V, V).eval()
    if ending:
        bias = torch.zeros(V)
        bias[EOS] = 1.5
        model.output.register_forward_hook(lambda module, inputs, logits: logits * 0.3 + bias)
    return model


def sources(batch: int = 6, length: int = 7, seed: int = 0) -> torch.Tensor:
    src = torch.randint(4, V, (batch, length), generator=torch.Generator().manual_seed(seed))
    src[1, 4:] = PAD  # a shorter source in the batch
    return src  # (B, S)


@torch.no_grad()
def teacher_forced(model: Transformer, src: torch.Tensor, ids: list[int], ended: bool,
                   skip: int = 0) -> float:
    """Summed log-probability of ids (and EOS when ended) after the first `skip`, recomputed
    in one pass over the whole output: the reference the searches' sums must equal."""
    target = [*ids, EOS] if ended else ids
    logits = model(src[None], torch.tensor([[BOS, *target[:-1]]]))[0]  # (T, V)
    chosen = logits.log_softmax(-1).gather(1, torch.tensor(target)[:, None])[:, 0]
    return float(chosen[skip:].sum())


def ended(ids: list[int], src: torch.Tensor) -> bool:
    return len(ids) < int(LIMITS["max_len_a"] * int(src.ne(PAD).sum()) + LIMITS["max_len_b"])


@pytest.mark.parametrize("penalty", [0.0, 1.0])
def test_nbest_is_sorted_and_scored_as_the_beam_ranks(penalty):
    model, src = make(ending=True), sources()
    nbest = beam_search(model, src, beam=4, nbest=4, length_penalty=penalty, **LIMITS)
    best = beam_search(model, src, beam=4, length_penalty=penalty, **LIMITS)
    for row, (hypotheses, one) in enumerate(zip(nbest, best)):
        assert len(hypotheses) == 4 and one == hypotheses[:1]
        scores = [h.score for h in hypotheses]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.ids) for h in hypotheses}) == 4
        for h in hypotheses:
            length = len(h.ids) + ended(h.ids, src[row])
            assert h.score == pytest.approx(h.log_prob / length ** penalty)
            assert h.log_prob == pytest.approx(
                teacher_forced(model, src[row], h.ids, ended(h.ids, src[row])), abs=1e-4)
    endings = [ended(h.ids, src[row]) for row, n in enumerate(nbest) for h in n]
    assert any(endings) and (penalty == 0 or not all(endings))


def test_greedy_scores_its_output_like_the_teacher_forced_pass():
    model, src = make(ending=True), sources(seed=1)
    for row, h in enumerate(greedy(model, src, length_penalty=0.5, **LIMITS)):
        done = ended(h.ids, src[row])
        assert h.log_prob == pytest.approx(teacher_forced(model, src[row], h.ids, done), abs=1e-4)
        assert h.score == pytest.approx(h.log_prob / (len(h.ids) + done) ** 0.5)


def test_a_forced_prefix_starts_every_output_and_costs_nothing():
    model, src = make(ending=True), sources(seed=2)
    prefixes = torch.tensor([[7, 8, 9], [5, -1, -1], [-1, -1, -1], [11, 12, -1],
                             [7, 8, 9], [30, 31, 32]])  # (B, P): -1 past each prefix
    wanted = [[t for t in row if t >= 0] for row in prefixes.tolist()]
    free = greedy(model, src, **LIMITS)
    for search in ("greedy", "beam"):
        if search == "greedy":
            out = greedy(model, src, prefixes=prefixes, **LIMITS)
        else:
            out = [n[0] for n in beam_search(model, src, beam=3, prefixes=prefixes, **LIMITS)]
        for row, (h, prefix) in enumerate(zip(out, wanted)):
            assert h.ids[:len(prefix)] == prefix
            done = ended(h.ids, src[row])
            reference = teacher_forced(model, src[row], h.ids, done, skip=len(prefix))
            assert h.log_prob == pytest.approx(reference, abs=1e-4), search
        if search == "greedy":  # row 2 has no prefix: the other rows' change nothing there
            assert out[2] == free[2]
    continued = greedy(model, src[:1], prefixes=prefixes[:1], **LIMITS)[0]
    teacher = greedy(model, src[:1], **LIMITS)[0]  # no prefix: the model's own start
    assert continued.ids[:3] == [7, 8, 9] and teacher.ids[:3] != [7, 8, 9]


def test_a_prefix_longer_than_the_cap_still_gets_a_step_past_it():
    model, src = make(seed=3), sources(seed=3)[:1]
    prefix = torch.tensor([[5] * 20])  # (1, P): the cap is 7 + 6 = 13
    h = greedy(model, src, prefixes=prefix, **LIMITS)[0]
    assert h.ids[:20] == [5] * 20 and len(h.ids) <= 21


def test_force_prefix_leaves_one_choice_at_no_cost():
    log_probs = torch.randn(3, V).log_softmax(-1)
    forced = force_prefix(log_probs.clone(), torch.tensor([[4, 6], [-1, -1], [9, -1]]), step=0)
    assert forced[0, 4] == 0 and forced[0].isinf().sum() == V - 1
    assert torch.equal(forced[1], log_probs[1]) and forced[2].argmax() == 9


def test_sampling_repeats_per_seed_differs_across_seeds_and_top_k_1_is_greedy():
    model, src = make(seed=4), sources(seed=4)
    def draw(**options):
        return [h.ids for h in greedy(model, src, choose=Sampler(Sampling(**options)),
                                      **LIMITS)]
    assert draw(seed=1) == draw(seed=1)
    assert len({tuple(map(tuple, draw(seed=seed))) for seed in range(4)}) == 4
    assert draw(top_k=1, seed=5) == [h.ids for h in greedy(model, src, **LIMITS)]
    uncached = greedy(model, src, use_cache=False, choose=Sampler(Sampling(seed=1)), **LIMITS)
    assert [h.ids for h in uncached] == draw(seed=1)


def test_sampler_draws_only_within_top_k_and_top_p():
    log_probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().expand(2000, 4)  # (b, V)
    def counts(**options):
        drawn = Sampler(Sampling(seed=0, **options))(log_probs)
        return torch.bincount(drawn, minlength=4).tolist()
    assert counts(top_k=2)[2:] == [0, 0] and min(counts(top_k=2)[:2]) > 0
    assert counts(top_p=0.75)[2:] == [0, 0]  # 0.5 + 0.3 reach 0.75
    assert counts(top_p=0.85)[3] == 0 and counts(top_p=0.85)[2] > 0  # 0.85 needs the third
    assert counts(top_p=0.4) == [2000, 0, 0, 0]
    cold, hot = counts(temperature=0.25), counts(temperature=4.0)
    assert cold[0] > counts()[0] > hot[0]  # sharper below 1, flatter above
    everything = counts()
    assert all(abs(n / 2000 - p) < 0.04 for n, p in zip(everything, [0.5, 0.3, 0.15, 0.05]))


def test_search_options_and_their_problems():
    from mha.configs.schema import ConfigError
    from mha.inference.search import Search

    assert Search(beam=4, nbest=4).nbest == 4
    bad = {"nbest": ({"beam": 2, "nbest": 3}, "--nbest (3) is above the beam size (2)"),
           "beam": ({"beam": 3, "sampling": Sampling()}, "does not combine with --beam 3"),
           "top_k": ({"sampling": Sampling(top_k=0)}, "--top-k must be 1 or more, got 0"),
           "top_p": ({"sampling": Sampling(top_p=1.5)}, "--top-p must be in (0, 1], got 1.5"),
           "zero_p": ({"sampling": Sampling(top_p=0.0)}, "--top-p must be in (0, 1], got 0.0"),
           "temperature": ({"sampling": Sampling(temperature=0.0)}, "--temperature must be"),
           "seed": ({"sampling": Sampling(seed=-1)}, "--seed must be 0 or more")}
    for options, message in bad.values():
        with pytest.raises(ConfigError, match=re.escape(message)):
            Search(**options)
