"""The static-cache greedy decoder (model/static_decode.py) against the readable `greedy`, eager
and compiled once; when the engine takes it (inference/fast_decode.py); decode.compile."""

from __future__ import annotations

import pytest
import torch

from mha.configs.schema import ConfigError, DecodeConfig, load_config
from mha.inference import fast_decode, translate
from mha.inference.fast_decode import (
    AUTO_MIN_LINES,
    FROZEN_MIN_BATCH,
    CompiledGreedy,
    compile_wanted,
)
from mha.inference.search import Search
from mha.model.decode import greedy
from mha.model.sample import Sampling
from mha.model.static_decode import StaticGreedy
from tests.test_search import BOS, EOS, LIMITS, PAD, make, sources

pytestmark = pytest.mark.usefixtures("_one_thread")


def assert_same(expected, got) -> None:
    assert [h.ids for h in got] == [h.ids for h in expected]
    for want, have in zip(expected, got):
        assert have.log_prob == pytest.approx(want.log_prob, abs=1e-5)
        assert have.score == pytest.approx(want.score, abs=1e-5)


def varied_sources() -> torch.Tensor:
    src = sources(batch=9, length=8, seed=3)
    src[2, 2:] = PAD  # sources of several lengths: rows end at different steps and caps
    src[5, 5:] = PAD
    src[7, 1:] = PAD
    return src


def ending(seed: int, eos_bias: float):
    """A random model whose rows of varied_sources() end by EOS at several steps, and at their
    length limits (seeds and biases found by trying): logits flattened, EOS's raised."""
    model, bias = make(seed), torch.zeros(40)
    bias[EOS] = eos_bias
    model.output.register_forward_hook(lambda module, inputs, logits: logits * 0.3 + bias)
    return model


@pytest.mark.parametrize(("seed", "eos_bias"), [(0, 0.8), (4, 0.6), (4, 0.7)])
@pytest.mark.parametrize("length_penalty", [1.0, 0.6])
def test_static_greedy_gives_greedys_hypotheses(seed: int, eos_bias: float,
                                                length_penalty: float) -> None:
    model, src = ending(seed, eos_bias), varied_sources()
    expected = greedy(model, src, length_penalty=length_penalty, **LIMITS)
    assert len({len(h.ids) for h in expected}) >= 4  # rows end at different steps
    assert_same(expected, StaticGreedy(model)(src, length_penalty=length_penalty, **LIMITS))


def test_static_greedy_stops_at_the_length_limit() -> None:
    model, src = make(4), varied_sources()  # no raised EOS: most rows run to their cap
    limits = {**LIMITS, "max_len_a": 0.5, "max_len_b": 2}
    expected = greedy(model, src, **limits)
    assert any(len(h.ids) == 0.5 * 8 + 2 for h in expected)
    assert_same(expected, StaticGreedy(model)(src, **limits))


def test_static_greedy_decodes_a_batch_of_one_and_a_one_token_source() -> None:
    model, src = ending(4, 0.6), varied_sources()
    for one in (src[:1], src[7:8, :1], src[:, :1]):
        assert_same(greedy(model, one, **LIMITS), StaticGreedy(model)(one, **LIMITS))


def test_compiled_greedy_gives_greedys_hypotheses() -> None:
    """The one compiled case, both graphs (a minute or two on a loaded 2-core CPU, less with a
    warm cache): batches of FROZEN_MIN_BATCH rows or more, weights frozen, and, for another
    model, fewer: each decoder runs its own model's graph, not the first one's frozen weights."""
    src = varied_sources()
    for model, batches in ((make(8), (src[:FROZEN_MIN_BATCH + 1], src)),  # sizes share a graph
                           (make(6), (src[:3], src[4:5]))):
        decoder = CompiledGreedy(model, bos=BOS, eos=EOS)
        for batch in batches:
            assert_same(greedy(model, batch, **LIMITS), decoder(batch, **LIMITS))
        assert len(decoder.decoders) == 1 and decoder.compile_seconds > 0


class Uncompiled:
    """Stands in for compiled_greedy: StaticGreedy eager, so no test here waits on a compiler;
    notes whether inductor's config said to freeze the weights when it was called."""

    def __init__(self) -> None:
        self.frozen: list[bool] = []

    def __call__(self, model, *, bos: int, eos: int, warm_rows: tuple[int, ...]):
        self.frozen.append(torch._inductor.config.freezing)
        return StaticGreedy(model), 0.5


@pytest.fixture
def engine(monkeypatch):
    monkeypatch.setattr(fast_decode, "compiled_greedy", Uncompiled())
    model = make(7, ending=False)
    model.cfg = model.cfg  # the engine reads max_tokens from it
    cfg = DecodeConfig(max_len_a=1.0, max_len_b=6)
    return translate.MhaEngine(model, tokenizer=None, decode_cfg=cfg, compile=True)


def test_the_engine_compiles_plain_greedy_once(engine) -> None:
    ids = [[5, 6, 7, EOS], [8, EOS]]
    first = engine.decode(ids, Search())
    engine.decode(ids, Search())
    assert engine.fast is not None and fast_decode.compiled_greedy.frozen == [False]
    assert engine.compile_seconds == 0.5
    engine.decode(ids * FROZEN_MIN_BATCH, Search())  # a batch that big: frozen weights
    engine.decode(ids * FROZEN_MIN_BATCH, Search())
    assert fast_decode.compiled_greedy.frozen == [False, True] and engine.compile_seconds == 1.0
    assert not torch._inductor.config.freezing  # only while compiling and decoding
    expected = greedy(engine.model, translate._padded(ids, PAD), bos=2, eos=3, max_len_a=1.0,
                      max_len_b=6)
    assert [nbest[0].ids for nbest in first] == [h.ids for h in expected]


@pytest.mark.parametrize("case", ["beam", "nbest", "sampling", "prefix", "hook", "head mask",
                                  "no cache"])
def test_other_searches_and_hooked_models_decode_eager(engine, case: str) -> None:
    search = {"beam": Search(beam=3), "nbest": Search(beam=2, nbest=2),
              "sampling": Search(sampling=Sampling(seed=1))}.get(case, Search())
    if case == "hook":
        engine.model.decoder[0].register_forward_hook(lambda *_: None)
    if case == "head mask":
        engine.model.decoder[1].cross_attn.head_mask = torch.tensor([1.0, 0.0, 1.0, 1.0])
    engine.use_cache = case != "no cache"
    prefixes = [[9], []] if case == "prefix" else None
    engine.decode([[5, 6, 7, EOS], [8, EOS]], search, prefixes)
    assert engine.fast is None


def test_auto_compiles_for_enough_known_lines() -> None:
    assert compile_wanted("auto", AUTO_MIN_LINES) and not compile_wanted("auto", 1)
    assert not compile_wanted("auto", None)  # stdin: not known
    assert compile_wanted("true", 1) and compile_wanted(True, None)
    assert not compile_wanted("false", 10**6) and not compile_wanted(False, 10**6)


@pytest.mark.parametrize(("given", "read"), [("auto", "auto"), ("true", "true"),
                                             ("false", "false")])
def test_decode_compile_takes_auto_true_false(given: str, read: str) -> None:
    assert load_config("tiny", [f"decode.compile={given}"]).decode.compile == read


@pytest.mark.parametrize("bad", ["maybe", "1", "fast"])
def test_a_bad_decode_compile_is_one_clear_line(bad: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config("tiny", [f"decode.compile={bad}"])
    message = str(error.value)
    assert "decode.compile must be one of auto, true, false, got" in message
    assert "\n" not in message


def test_compiling_needs_a_cpp_compiler(monkeypatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert not compile_wanted("auto", AUTO_MIN_LINES)  # eager, as without the lines
    with pytest.raises(ConfigError, match="needs a C\\+\\+ compiler .* --no-compile"):
        compile_wanted(True, 1)
