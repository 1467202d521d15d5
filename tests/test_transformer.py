"""The Transformer: causality, padding invariance, cached decoding, gradients, learning."""

import dataclasses
from functools import partial
from types import SimpleNamespace

import pytest
import torch

from mha.configs.schema import ModelConfig
from mha.model import AttentionRecorder, Transformer
from mha.model.decode import beam_search, greedy
from mha.model.info import parameter_count
from mha.training.loss import RealTokenLogits, summed_loss

PAD, BOS, EOS, V = 0, 2, 3, 40
CFG = ModelConfig(d_model=32, heads=4, encoder_layers=2, decoder_layers=2, d_ff=64, dropout=0.0)


def make(cfg=CFG, seed=0, **changes):
    torch.manual_seed(seed)
    return Transformer(dataclasses.replace(cfg, **changes), V, V).eval()


def random_ids(*shape, seed=0):
    return torch.randint(4, V, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_changing_future_targets_leaves_earlier_outputs_unchanged(norm):
    model = make(norm=norm)
    src, tgt = random_ids(2, 7), random_ids(2, 9, seed=1)
    changed = tgt.clone()
    changed[:, 5:] = random_ids(2, 4, seed=2)
    before, after = model(src, tgt), model(src, changed)
    torch.testing.assert_close(before[:, :5], after[:, :5], atol=1e-6, rtol=0)
    assert not torch.allclose(before[:, 5:], after[:, 5:])


def test_padding_leaves_real_positions_unchanged():
    model = make()
    src, tgt = random_ids(1, 6), random_ids(1, 5, seed=1)
    padded_src = torch.cat([src, torch.full((1, 4), PAD)], dim=1)
    padded_tgt = torch.cat([tgt, torch.full((1, 3), PAD)], dim=1)
    memory = model.encode(src, src.eq(PAD))
    padded_memory = model.encode(padded_src, padded_src.eq(PAD))
    torch.testing.assert_close(padded_memory[:, :6], memory, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(padded_src, padded_tgt)[:, :5], model(src, tgt),
                               atol=1e-5, rtol=1e-5)


def test_cached_decoding_equals_full_recomputation_at_every_step():
    model = make()
    src = random_ids(3, 8)
    src[0, 5:] = PAD  # different source lengths in one batch
    src[1, 3:] = PAD
    tgt = random_ids(3, 6, seed=1)
    src_pad = src.eq(PAD)
    memory = model.encode(src, src_pad)
    full = model.decode(tgt, memory, src_pad)
    cache = model.new_cache()
    for t in range(6):
        step = model.decode(tgt[:, t:t + 1], memory, src_pad, cache)
        torch.testing.assert_close(step[:, 0], full[:, t], atol=1e-5, rtol=1e-5)


def test_weights_on_request_cover_every_layer_and_change_no_output():
    model = make()
    src, tgt = random_ids(2, 7), random_ids(2, 5, seed=1)
    src[1, 4:] = PAD
    with AttentionRecorder(model) as weights:
        logits = model(src, tgt)
    torch.testing.assert_close(logits, model(src, tgt), atol=1e-5, rtol=1e-5)
    encoder = [weights[f"encoder.{i}.self_attn"] for i in range(2)]
    assert [tuple(w.shape) for w in encoder] == [(2, 4, 7, 7)] * 2  # (B, H, S, S) per layer
    assert all(w[1, :, :, 4:].eq(0).all() for w in encoder)  # padding gets no weight
    shapes = [(tuple(weights[f"decoder.{i}.self_attn"].shape),
               tuple(weights[f"decoder.{i}.cross_attn"].shape)) for i in range(2)]
    assert shapes == [((2, 4, 5, 5), (2, 4, 5, 7))] * 2


def test_beam_search_shows_every_steps_live_prefixes_with_their_log_probabilities():
    model, src = make(), random_ids(2, 6)
    seen = []
    out = beam_search(model, src, beam=3, bos=BOS, eos=EOS,
                      on_step=lambda tokens, scores: seen.append((tokens, scores)))
    assert out == beam_search(model, src, beam=3, bos=BOS, eos=EOS) and seen
    for step, (tokens, scores) in enumerate(seen):
        assert tokens.shape == (6, step + 2) and tokens[:, 0].eq(BOS).all()
        assert scores.shape == (2, 3)
        live = scores.isfinite().view(-1)
        src_pad = src.eq(PAD).repeat_interleave(3, dim=0)[live]  # (N, S) for the N live rows
        memory = model.encode(src, src.eq(PAD)).repeat_interleave(3, dim=0)[live]
        hidden = model.decode(tokens[live, :-1], memory, src_pad)  # (N, step + 1, D)
        log_probs = model.logits(hidden)  # (N, step + 1, V)
        summed = log_probs.log_softmax(-1).gather(-1, tokens[live, 1:, None]).sum((1, 2))
        torch.testing.assert_close(summed, scores.view(-1)[live], atol=1e-4, rtol=0)


def test_greedy_with_and_without_cache_agree():
    model = make(seed=3)
    src = random_ids(4, 7)
    src[2, 4:] = PAD
    cached = greedy(model, src, bos=BOS, eos=EOS, use_cache=True)
    uncached = greedy(model, src, bos=BOS, eos=EOS, use_cache=False)
    assert [h.ids for h in cached] == [h.ids for h in uncached]
    assert all(len(h.ids) <= 1.5 * 7 + 10 for h in cached)


@pytest.mark.parametrize("search", ["greedy", "greedy without cache", "beam 3"])
def test_output_length_is_capped_at_a_times_source_length_plus_b(search):
    decode = {"greedy": greedy, "greedy without cache": partial(greedy, use_cache=False),
              "beam 3": lambda *a, **k: [n[0] for n in beam_search(*a, beam=3, **k)]}[search]
    model = make(seed=4, max_positions=12)
    never_eos = torch.zeros(V)
    never_eos[5] = 1e4  # token 5 always wins, so no sentence ends before its cap
    model.output.register_forward_hook(lambda module, inputs, logits: logits + never_eos)
    src = random_ids(3, 8)
    src[0, 5:] = PAD  # 5, 2 and 8 source tokens
    src[1, 2:] = PAD
    out = [h.ids for h in decode(model, src, bos=BOS, eos=EOS, max_len_a=0.5, max_len_b=3)]
    assert [len(ids) for ids in out] == [int(0.5 * 5 + 3), int(0.5 * 2 + 3), int(0.5 * 8 + 3)]
    out = [h.ids for h in decode(model, src, bos=BOS, eos=EOS, max_len_a=1.0, max_len_b=100)]
    # within the model's 12 positions, BOS included
    assert [len(ids) for ids in out] == [11, 11, 11]


class LastTokenModel:
    """A stand-in for beam search: the next token's log-probabilities depend on
    the last token only."""

    pad_id, cfg = PAD, ModelConfig()

    def __init__(self, next_token: dict[int, dict[int, float]]) -> None:
        probs = torch.full((V, V), 1e-6)
        for last, choices in next_token.items():
            for token, p in choices.items():
                probs[last, token] = p
        self.log_probs = probs.log().log_softmax(dim=-1)  # (V, V): row = last token

    def encode(self, src_ids, src_pad_mask):
        return torch.zeros(*src_ids.shape, 1)

    def new_cache(self):
        return SimpleNamespace(reorder=lambda index: None)

    def decode(self, tgt_in, memory, src_pad_mask, cache):
        return self.log_probs[tgt_in[:, -1]][:, None]  # (B, 1, V): its "states" are the scores

    def logits(self, hidden):
        return hidden


def test_beam_search_ranks_endings_with_the_length_penalty():
    # "</s>" at once: log 0.5 over 1 token; "A </s>": log 0.5 + log 0.9 over 2 tokens
    model = LastTokenModel({BOS: {EOS: 0.5, 4: 0.5}, 4: {EOS: 0.9, 4: 0.1}})
    src = random_ids(1, 3)
    def best(penalty):
        return beam_search(model, src, beam=2, bos=BOS, eos=EOS, length_penalty=penalty)[0][0].ids
    assert best(0.0) == []  # raw log-probability: the shorter ending wins
    assert best(1.0) == [4]  # per token: -0.40 beats -0.69


def test_gradients_reach_every_parameter():
    model = make(dropout=0.1).train()
    logits = model(random_ids(2, 5), random_ids(2, 6, seed=1))
    logits.logsumexp(-1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


@pytest.mark.parametrize("changes", [{}, {"tie_embeddings": False}, {"norm": "post"},
                                     {"positional": "learned", "heads": 2}])
def test_parameter_count_matches_the_formula(changes):
    model = make(**changes)
    cfg = dataclasses.replace(CFG, **changes)
    assert sum(p.numel() for p in model.parameters()) == parameter_count(cfg, V, V)


def test_tiny_model_overfits_eight_pairs():
    torch.manual_seed(0)
    pairs = [(random_ids(1, n, seed=i)[0], random_ids(1, n + 1, seed=100 + i)[0])
             for i, n in enumerate([3, 4, 5, 6, 4, 5, 3, 6])]
    src = torch.nn.utils.rnn.pad_sequence([s for s, _ in pairs], batch_first=True)
    tgt = torch.nn.utils.rnn.pad_sequence(
        [torch.cat([torch.tensor([BOS]), t, torch.tensor([EOS])]) for _, t in pairs],
        batch_first=True)
    model = make(dropout=0.0).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        logits = model(src, tgt[:, :-1])
        loss = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), tgt[:, 1:], ignore_index=PAD)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    expected = [t.tolist() for _, t in pairs]
    assert [h.ids for h in greedy(model, src, bos=BOS, eos=EOS)] == expected
    assert [n[0].ids for n in beam_search(model, src, beam=3, bos=BOS, eos=EOS)] == expected


def test_loss_over_real_tokens_only_equals_cross_entropy_over_all_logits():
    model = make()
    src, tgt = random_ids(3, 6), random_ids(3, 8, seed=1)
    tgt[0, 5:], tgt[2, 3:] = PAD, PAD  # two shorter targets
    loss = summed_loss(model, src, tgt[:, :-1], tgt[:, 1:], label_smoothing=0.1)
    reference = torch.nn.functional.cross_entropy(
        model(src, tgt[:, :-1]).flatten(0, 1), tgt[:, 1:].flatten(), ignore_index=PAD,
        reduction="sum", label_smoothing=0.1)
    torch.testing.assert_close(loss, reference)
    predict = tgt[:, 1:].ne(PAD)
    assert RealTokenLogits(model)(src, tgt[:, :-1], predict).shape == (int(predict.sum()), V)
