"""What a client may ask `mha serve` for: the request bodies of POST /translate and /explore.

pydantic checks every field (types strict: "3" is not a number; unknown fields refused) and the
options that go together as `mha translate` checks its flags (cli/decoding.py): sampling's
settings only with `sample`, `sample` only with greedy's beam of 1, `nbest` within the beam,
the alignment settings only with `alignments`. Each problem becomes a 422 naming the field.
What depends on the run (the run's own beam, its decoder layers, the engine) is checked by the
service (inference/service.py), with the same kind of answer.
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

MAX_BEAM = 16  # a larger beam in a request is refused (422): one request must not hold the worker


def _encodable(text: str) -> str:
    """JSON may hold half of a surrogate pair ("\\ud800"), which is no character."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"character {error.start + 1} is U+{ord(text[error.start]):04X}, half "
                         "of a surrogate pair, not a character") from None
    return text


def _finite(value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value}")
    return value


Text = Annotated[str, AfterValidator(_encodable)]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    beam: int | None = Field(None, ge=1, le=MAX_BEAM, description="Beam size; 1 is greedy "
                             "(default: the run's decode.beam; with sample: 1).")


class TranslateRequest(Request):
    """Sentences and the decoding options of `mha translate --json`; the answer holds, per
    sentence, what `mha translate --json` prints for it with the same options."""

    text: list[Text] = Field(min_length=1, description="Sentences, one translation each; a tab "
                             "and a second column in one is its target prefix.")
    nbest: int | None = Field(None, ge=1, le=MAX_BEAM, description="Also return the N best "
                              "hypotheses of each sentence, under \"nbest\" (beam >= N).")
    prefix: Text | None = Field(None, description="Force every translation to start with this "
                                "text (a sentence's own tab column wins).")
    token_scores: bool = Field(False, description="Each output subword's log-probability.")
    alignments: bool = Field(False, description="Pharaoh word links (source-target, 0-based) "
                             "from encoder-decoder attention.")
    align_layer: int | None = Field(None, ge=0, description="The decoder layer whose heads give "
                                    "the links (default: the run's best from `mha align`, else "
                                    "the second-to-last).")
    shift_att: bool = Field(False, description="Shift-Att: link each output word by the step "
                            "that reads it.")
    sample: bool = Field(False, description="Draw each token instead of taking the most "
                         "probable; a request is drawn alone, as `mha translate --sample` draws "
                         "its input, so the same seed gives the same answer.")
    top_k: int | None = Field(None, ge=1, description="Draw among the K most probable tokens.")
    top_p: Annotated[float | None, AfterValidator(_finite)] = Field(
        None, gt=0, le=1, description="Draw among the fewest most probable tokens reaching P.")
    temperature: Annotated[float | None, AfterValidator(_finite)] = Field(
        None, gt=0, description="Above 0: below 1 sharper, above 1 flatter (default 1).")
    seed: int | None = Field(None, ge=0, description="The draws' seed (default 0).")

    @model_validator(mode="after")
    def _together(self) -> TranslateRequest:
        problems = []
        shaping = [name for name in ("top_k", "top_p", "temperature", "seed")
                   if getattr(self, name) is not None]
        if shaping and not self.sample:
            problems.append(f"{', '.join(shaping)} only shape sample's draws: add \"sample\": "
                            "true")
        if self.sample and (self.beam or 1) > 1:
            problems.append(f"sample draws one token at a time: it does not combine with beam "
                            f"{self.beam} (leave beam out)")
        if self.nbest is not None and self.beam is not None and self.nbest > self.beam:
            problems.append(f"nbest ({self.nbest}) is above the beam size ({self.beam}): a beam "
                            f"keeps only that many hypotheses; give beam {self.nbest} or more")
        aligning = [name for name, given in (("align_layer", self.align_layer is not None),
                                             ("shift_att", self.shift_att)) if given]
        if aligning and not self.alignments:
            problems.append(f"{', '.join(aligning)} choose how alignments are read: add "
                            "\"alignments\": true")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class ExploreRequest(Request):
    text: Text = Field(description="One sentence, explored as `mha explore` does.")
