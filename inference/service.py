"""What `mha serve` does with the model: decode a merged batch, explore a sentence, the run's facts.

The HTTP side (inference/serve.py) checks requests and merges them (inference/batcher.py); the
calls here run on the batcher's one worker thread. Decoding goes through the one engine
interface and batching loop of inference/translate.py, so the server translates as `mha
translate` does; the explore page's JSON comes from inference/explore.py's builder.

Decoding options are a frozen model: a batch holds sentences with equal options, and an option
that joins `mha translate` (n-best, sampling, a prefix) joins here as one more field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from mha.configs.schema import DecodeConfig, to_dict
from mha.inference import checkpoint
from mha.inference.explore import page_data, page_html
from mha.inference.search import Search
from mha.inference.translate import Engine, MhaEngine, decode_chunk

MAX_BEAM = 16  # a larger beam in a request is refused (422): one request must not hold the worker
WARM_UP = "Ein Mann fährt Fahrrad."


class DecodeOptions(BaseModel):
    """How to decode; fields a request may set (None: the run's default). Equal options may
    share a batch."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)  # "3" is not a number

    beam: int | None = Field(None, ge=1, le=MAX_BEAM, description="Beam size; 1 is greedy "
                             "(default: the run's decode.beam).")


def _encodable(text: str) -> str:
    """JSON may hold half of a surrogate pair ("\\ud800"), which is no character."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"character {error.start + 1} is U+{ord(text[error.start]):04X}, half "
                         "of a surrogate pair, not a character") from None
    return text


Text = Annotated[str, AfterValidator(_encodable)]


class TranslateRequest(DecodeOptions):
    text: list[Text] = Field(min_length=1, description="Sentences, one translation each.")


class ExploreRequest(DecodeOptions):
    text: Text = Field(description="One sentence, explored as `mha explore` does.")


@dataclass(frozen=True)
class Translation:
    text: str
    score: float | None  # the search's log-probability of its output (EOS included when it
    # chose one), what `mha translate --json` calls log_prob; None for an empty input
    tokens: int  # output tokens, EOS aside (0 for an empty input)


class Service:
    """One engine and its run: the calls the server makes on its worker thread."""

    def __init__(self, engine: Engine, decode: DecodeConfig, *, run_dir: Path,
                 which: str) -> None:
        self.engine, self.decode, self.run_dir, self.which = engine, decode, run_dir, which
        self.tokenizer = engine.tokenizer
        self.explorable = isinstance(engine, MhaEngine)  # attention needs mha's own model
        self.warm = False

    def options(self, request: DecodeOptions) -> DecodeOptions:
        """The request's options with the run's defaults filled in (so equal choices merge)."""
        return DecodeOptions(beam=request.beam or self.decode.beam)

    def translate(self, options: DecodeOptions, lines: list[str]) -> list[Translation]:
        """A merged batch (at most the batcher's cap), decoded as one; in input order."""
        found = decode_chunk(self.engine, lines, Search(beam=options.beam),
                             batch_size=len(lines))
        best = [t.hypotheses[0] if t.hypotheses else None for t in found]
        return [Translation(t.text, round(h.log_prob, 4), len(h.ids)) if h is not None
                else Translation("", None, 0) for t, h in zip(found, best)]

    def explore(self, options: DecodeOptions, text: str) -> bytes:
        """The explore page's JSON for one sentence, serialised here, off the event loop."""
        data = self._page_data([text], options.beam, "the request")
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def page(self) -> str:
        """The explore page in live mode, with no sentence yet."""
        return page_html(self._page_data([], self.decode.beam, ""),
                         f"mha serve: {self.run_dir}", live=True)

    def _page_data(self, texts: list[str], beam: int, name: str) -> dict:
        return page_data(self.engine.model, self.tokenizer, self.decode, texts,
                         run_dir=self.run_dir, which=self.which, beam=beam, name=name)

    def warm_up(self) -> None:
        """One translation before the first request's: the first call of a model is slow."""
        self.translate(self.options(DecodeOptions()), [WARM_UP])
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

