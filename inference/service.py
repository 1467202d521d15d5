"""What `mha serve` does with the model: decode a merged batch, explore a sentence, the run's facts.

The HTTP side (inference/serve.py) checks requests (inference/serve_requests.py) and merges them
(inference/batcher.py); the calls here run on the batcher's one worker thread. Decoding goes
through the one engine interface and batching loop of inference/translate.py, and answers are
built by the same `json_object` as `mha translate --json`, so the server answers what the CLI
prints for the same options; the explore page's JSON comes from inference/explore.py's builder.

A request's options become a `Decoding`: a batch holds sentences with equal Decodings (a
sentence's target prefix is its own, so prefixes do not split batches). A request that samples
is decoded alone and its draws seeded afresh, as `mha translate --sample` decodes its input:
draws depend on the batch they are made in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from mha.configs.schema import DecodeConfig, to_dict
from mha.inference import checkpoint
from mha.inference.batcher import Batcher
from mha.inference.explore import add_run_data, page_data, page_html
from mha.inference.explore_align import add_links, links_layer
from mha.inference.fast_decode import FROZEN_MIN_BATCH, fast_path_allows
from mha.inference.search import Search, Translation, json_object, split_prefixes
from mha.inference.serve_requests import TranslateRequest
from mha.inference.stream_runner import Spec
from mha.inference.streaming import Stream
from mha.inference.translate import Engine, MhaEngine, decode_chunk, encode_sources
from mha.model.decode import Hypothesis
from mha.model.sample import Sampling

WARM_UP = "Ein Mann fährt Fahrrad."


class OptionError(ValueError):
    """A request's option that this run or engine cannot honour (422), naming the field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(problem)
        self.field, self.problem = field, problem


@dataclass(frozen=True)
class Decoding:
    """A request's options with the run's defaults filled in; equal Decodings share a batch."""

    search: Search
    nbest: bool = False  # answer every hypothesis under "nbest"
    token_scores: bool = False
    align: tuple[int, bool] | None = None  # (decoder layer, Shift-Att)


class Service:
    """One engine and its run: the calls the server makes on its worker thread."""

    def __init__(self, engine: Engine, decode: DecodeConfig, *, run_dir: Path,
                 which: str) -> None:
        self.engine, self.decode, self.run_dir, self.which = engine, decode, run_dir, which
        self.tokenizer = engine.tokenizer
        self.explorable = isinstance(engine, MhaEngine)  # attention needs mha's own model
        self.warm = False
        self.links_layer: int | None = None  # the page's word links' layer (set by page())

    def options(self, request: TranslateRequest) -> Decoding:
        """The request's Decoding, with the run's defaults; OptionError for what this run or
        engine cannot do."""
        sampling = Sampling(top_k=request.top_k, top_p=request.top_p or 1.0,
                            temperature=request.temperature or 1.0,
                            seed=request.seed or 0) if request.sample else None
        beam = 1 if sampling is not None else request.beam or self.decode.beam
        if request.nbest is not None and request.nbest > beam:
            why = "sample draws one" if sampling is not None else "the run's decode.beam"
            raise OptionError("nbest", f"nbest ({request.nbest}) is above the beam size ({beam}, "
                              f"{why}): give beam {request.nbest} or more")
        if sampling is not None and not self.explorable:
            raise OptionError("sample", "a CTranslate2 model draws with one seed for as long as "
                              "it is loaded, so a request's seed cannot be honoured: serve with "
                              "--engine mha to sample")
        return Decoding(Search(beam, request.nbest or 1, sampling), request.nbest is not None,
                        request.token_scores, self._align(request))

    def _align(self, request: TranslateRequest) -> tuple[int, bool] | None:
        if not request.alignments:
            return None
        if not self.explorable:
            raise OptionError("alignments", "alignments read one chosen layer's heads averaged; "
                              "a model exported for --engine ctranslate2 returns only the "
                              "attention fixed at export: serve with --engine mha")
        from mha.inference.align import default_layer

        layers = len(self.engine.model.decoder)
        layer = request.align_layer
        if layer is None:
            layer = default_layer(self.run_dir, layers)
        if layer >= layers:
            raise OptionError("align_layer", f"align_layer must be a decoder layer, 0 to "
                              f"{layers - 1}, got {layer}")
        return layer, request.shift_att

    def items(self, request: TranslateRequest) -> list[tuple[str, str]]:
        """(source, target prefix) per sentence: a tab column, else the request's prefix."""
        return list(zip(*split_prefixes(request.text, request.prefix or "")))

    def translate(self, decoding: Decoding, items: list[tuple[str, str]]) -> list[dict]:
        """A merged batch (at most the batcher's cap), decoded as `mha translate` decodes its
        input (sorted by length, decode.batch_size at a time); per sentence, in input order,
        what `mha translate --json` prints for it."""
        from mha.inference.translation_links import Aligner

        align = None if decoding.align is None else Aligner(
            self.engine.model, self.tokenizer, *decoding.align, batch_size=self.decode.batch_size)
        found = decode_chunk(self.engine, [source for source, _ in items], decoding.search,
                             batch_size=self.decode.batch_size,
                             prefixes=[prefix for _, prefix in items],
                             token_scores=decoding.token_scores, align=align)
        return [json_object(t, decoding.nbest) for t in found]

    def stream(self, batcher: Batcher, *, window: float, max_rows: int) -> Stream | None:
        """Continuous batching for plain greedy requests (inference/streaming.py), in a process
        of its own that loads this run's model (compiled as this engine's greedy decoding is):
        mha's own model with its KV cache, not an ensemble; None where whole batches must do."""
        engine = self.engine
        if not (self.explorable and engine.use_cache and fast_path_allows(engine.model)):
            return None
        device = str(next(engine.model.parameters()).device)
        spec = Spec(self.run_dir, self.which, device, engine.compile, torch.get_num_threads(),
                    max_rows)
        return Stream(spec, batcher, window=window, answer=self.answer,
                      sources=lambda texts: encode_sources(self.tokenizer, texts,
                                                           engine.max_tokens))

    def streams(self, decoding: Decoding, items: list[tuple[str, str]]) -> bool:
        """Whether a request decodes in the running batch: plain greedy (no n-best, token
        scores, alignments or sampling) and no target prefix."""
        return decoding == Decoding(Search(beam=1)) and not any(p for _, p in items)

    def answer(self, hypothesis: Hypothesis | None) -> dict:
        """What `mha translate --json` prints for a greedy hypothesis (None: a blank line)."""
        return json_object(Translation([hypothesis], [self.tokenizer.decode_tgt(hypothesis.ids)])
                           if hypothesis is not None else Translation([], []))

    def sample(self, decoding: Decoding, items: list[tuple[str, str]]) -> list[dict]:
        """One request that samples, alone, its draws seeded afresh: `mha translate --sample`'s
        batches and draws for the same sentences and seed."""
        self.engine.sampler = None  # MhaEngine seeds its sampler on the first batch that samples
        return self.translate(decoding, items)

    def explore(self, beam: int | None, text: str) -> bytes:
        """The explore page's JSON for one sentence (with its word links when the run has
        `mha align`'s report), serialised here, off the event loop."""
        data = self._page_data([text], beam or self.decode.beam, "the request")
        if self.links_layer is not None:
            add_links(data["sentences"], self.links_layer)
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def page(self) -> str:
        """The explore page in live mode, with no sentence yet and the run's parts: stored head
        figures, alignment report, training tab, embeddings (as `mha explore` adds them)."""
        data = self._page_data([], self.decode.beam, "")
        add_run_data(data, self.engine.model, self.tokenizer, run_dir=self.run_dir,
                     which=self.which)
        if "alignment" in data:
            self.links_layer = links_layer(data["alignment"], data["model"])
        return page_html(data, f"mha serve: {self.run_dir}", live=True)

    def _page_data(self, texts: list[str], beam: int, name: str) -> dict:
        return page_data(self.engine.model, self.tokenizer, self.decode, texts,
                         run_dir=self.run_dir, which=self.which, beam=beam, name=name)

    def warm_up(self) -> None:
        """Translations before the first request's, with the run's beam and greedily, of one
        sentence and of FROZEN_MIN_BATCH: the first call of a model is slow, and greedy's
        compiled decoders (inference/fast_decode.py: small batches, and frozen) compile then."""
        for beam, rows in sorted({(self.decode.beam, 1), (1, 1), (1, FROZEN_MIN_BATCH)}):
            self.translate(Decoding(Search(beam=beam)), [(WARM_UP, "")] * rows)
        self.warm = True

    def info(self, limits: dict, batching: dict) -> dict:
        """The run's metadata (GET /info)."""
        tok = self.tokenizer
        if self.explorable:
            path = checkpoint.resolve(self.run_dir, self.which)
            state = checkpoint.load(path)
            engine, step, config = "mha", state["step"], dict(state["config"])
            config["decode"] = to_dict(self.decode)  # with RUN/decode.yaml's tuned choice
        else:  # an exported model: its folder holds the config, not the step
            engine, step, config = "ctranslate2", None, to_dict(self.engine.cfg)
            path = self.engine.folder
        return {"run": str(self.run_dir), "engine": engine, "checkpoint": str(path),
                "step": step, "config": config,
                "tokenizer": {"joint": tok.joint, "src_vocab_size": tok.src_vocab_size,
                              "tgt_vocab_size": tok.tgt_vocab_size},
                "limits": limits, "batching": batching, "explore": self.explorable}

