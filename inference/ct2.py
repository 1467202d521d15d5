"""Translate and score with an exported CTranslate2 model (`--engine ctranslate2`) as mha does.

Lines become mha's source ids (the same SentencePiece model, the same cut at the model's
positions), go to CTranslate2 as pieces, and come back as ids that mha's own code turns into
text. CTranslate2's own options do the work: `beam_size` and `num_hypotheses` (n-best),
`sampling_topk`, `sampling_topp` and `sampling_temperature` with `set_random_seed` (sampling),
`target_prefix` (a forced prefix) and `score_batch` (scoring given targets). Its scores are
mha's: log-probability / length ** length_penalty, the length counting the end token and the
prefix, the log-probability leaving the prefix out. Outputs are capped at a * S + b tokens like
mha's (S the source's ids, EOS included); CTranslate2 takes one cap per batch, so a batch is
decoded in groups of one cap.

Legend: B batch, S source length, T target length, V vocabulary size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from mha.configs.schema import load_config
from mha.data.tokenizer import Tokenizer
from mha.inference import export
from mha.inference.export import ExportError, import_ctranslate2, vocabularies
from mha.inference.run import pick_device
from mha.inference.search import Search
from mha.model.decode import Hypothesis, greedy, length_limits
from mha.model.sample import Sampling
from mha.model.transformer import Transformer


def model_folder(path: Path) -> Path:
    """The exported folder: `path` itself, or the run folder's ctranslate2/."""
    for folder in (path, path / export.DEFAULT_DIR):
        if (folder / "model.bin").is_file() and (folder / export.CONFIG_FILE).is_file():
            return folder
    raise ExportError(f"no exported model in {path} or {path / export.DEFAULT_DIR} "
                      f"(make one with `mha export {path} --to ctranslate2`)")


class CTranslate2Engine:
    """An exported model with its tokenizer and decode settings (the run's mha.yaml): an Engine
    (inference/translate.py) like mha's own decoder."""

    compile_seconds = 0.0  # nothing to compile

    def __init__(self, path: Path, *, device: str = "cpu", compute_type: str = "default",
                 threads: int | None = None) -> None:
        """Load RUN/ctranslate2 or an exported folder, on `threads` CPU threads (default: as many
        as torch uses; CTranslate2's own default, 4, oversubscribes a 2-core machine).

        Raises ExportError when there is no exported model or CTranslate2 cannot load it,
        ConfigError for an unusable device.
        """
        ct2 = import_ctranslate2()
        self.folder = model_folder(Path(path))
        self.cfg = load_config(self.folder / export.CONFIG_FILE)
        self.tokenizer = Tokenizer.load(self.folder)
        self.source_pieces, self.target_pieces = vocabularies(self.tokenizer)
        self.target_ids = {piece: i for i, piece in enumerate(self.target_pieces)}
        self.seed: int | None = None  # the seed CTranslate2 draws with, once it has drawn
        self.set_random_seed = ct2.set_random_seed
        self.max_tokens = self.cfg.model.max_tokens
        on = pick_device(device, cuda=ct2.get_cuda_device_count() > 0).type
        try:
            self.translator = ct2.Translator(str(self.folder), device=on,
                                             compute_type=compute_type,
                                             intra_threads=threads or torch.get_num_threads())
        except (RuntimeError, ValueError) as error:
            raise ExportError(f"CTranslate2 cannot load {self.folder}: {error}") from None

    def decode(self, sources: list[list[int]], search: Search,
               prefixes: list[list[int]] | None = None) -> list[list[Hypothesis]]:
        """Source ids (ending in EOS) and forced prefixes -> per source, `search.nbest`
        hypotheses, best first, each within its length cap."""
        prefixes = prefixes or [[] for _ in sources]
        caps = self.length_caps(sources, prefixes)
        found: list[list[Hypothesis]] = [[] for _ in sources]
        for cap in sorted(set(caps)):
            group = [i for i, each in enumerate(caps) if each == cap]
            results = self._translate([sources[i] for i in group], [prefixes[i] for i in group],
                                      search, cap)
            for i, hypotheses in zip(group, results):
                found[i] = hypotheses
        return found

    def _translate(self, sources: list[list[int]], prefixes: list[list[int]], search: Search,
                   cap: int) -> list[list[Hypothesis]]:
        sampling = search.sampling or Sampling(top_k=1)  # CTranslate2's greedy
        if search.sampling is not None:
            self._seed(sampling.seed)
        forced = [[self.target_pieces[t] for t in ids] or None for ids in prefixes]
        results = self.translator.translate_batch(
            [[self.source_pieces[t] for t in ids[:-1]] for ids in sources],  # </s> is added back
            forced if any(forced) else None, beam_size=search.beam,
            num_hypotheses=search.nbest, length_penalty=self.cfg.decode.length_penalty,
            sampling_topk=sampling.top_k or 0, sampling_topp=sampling.top_p,
            sampling_temperature=sampling.temperature, return_scores=True,
            return_end_token=True, max_input_length=0, min_decoding_length=0,
            max_decoding_length=cap)
        return [[self._hypothesis(pieces, score) for pieces, score in
                 zip(result.hypotheses, result.scores)] for result in results]

    def _seed(self, seed: int) -> None:
        """CTranslate2's decoding thread seeds its generator once, at its first draw, from
        `set_random_seed`: one seed per loaded model, set before that draw."""
        if self.seed is None:
            self.set_random_seed(seed)
            self.seed = seed
        elif seed != self.seed:
            raise ExportError(f"CTranslate2 draws with one seed per loaded model: this one "
                              f"drew with {self.seed}; load it again to draw with {seed}")

    def _hypothesis(self, pieces: list[str], score: float) -> Hypothesis:
        """mha's Hypothesis from CTranslate2's pieces (the end token last when it ended) and
        score, log-probability / length ** penalty with the end token in the length."""
        ended = pieces[-1:] == [self.target_pieces[Tokenizer.EOS]]
        log_prob = score * len(pieces) ** self.cfg.decode.length_penalty
        return Hypothesis(score, log_prob,
                          [self.target_ids[piece] for piece in pieces[:len(pieces) - ended]])

    def score(self, sources: list[list[int]], targets: list[list[int]]) -> list[list[float]]:
        """Each target token's log-probability, by CTranslate2's `score_batch`."""
        results = self.translator.score_batch(
            [[self.source_pieces[t] for t in ids[:-1]] for ids in sources],
            [[self.target_pieces[t] for t in ids[:-1]] for ids in targets],  # </s> added back
            max_input_length=0)
        return [result.log_probs for result in results]

    def length_caps(self, sources: list[list[int]], prefixes: list[list[int]]) -> list[int]:
        """mha's cap per source: a * S + b tokens, one past a forced prefix, within the model's
        positions."""
        lengths = torch.tensor([len(ids) for ids in sources])  # (B,)
        padding = torch.arange(int(lengths.max()))[None, :] >= lengths[:, None]  # (B, S)
        decode = self.cfg.decode
        return length_limits(padding, decode.max_len_a, decode.max_len_b,
                             self.cfg.model.max_tokens,
                             torch.tensor([len(ids) for ids in prefixes])).tolist()


@dataclass
class Agreement:
    """Greedy outputs of mha and of the export, compared sentence by sentence."""

    sentences: int = 0
    equal: int = 0
    near_ties: list[int] = field(default_factory=list)  # differ where mha's margin < tolerance
    differ: list[int] = field(default_factory=list)  # differ where mha was sure: a real fault


@torch.no_grad()
def compare_greedy(model: Transformer, engine: CTranslate2Engine, sources: list[list[int]],
                   tolerance: float = 1e-4) -> Agreement:
    """Decode each source alone with both; where outputs differ, ask mha's logits how close its
    choice was at the first difference (top-2 margin). Sources are ids ending in EOS."""
    decode = engine.cfg.decode
    agreement = Agreement()
    for index, ids in enumerate(sources):
        src_ids = torch.tensor([ids])  # (1, S)
        ours = greedy(model, src_ids, bos=Tokenizer.BOS, eos=Tokenizer.EOS,
                      max_len_a=decode.max_len_a, max_len_b=decode.max_len_b)[0].ids
        theirs = engine.decode([ids], Search())[0][0].ids
        agreement.sentences += 1
        if ours == theirs:
            agreement.equal += 1
        elif top2_margin(model, src_ids, ours, theirs) < tolerance:
            agreement.near_ties.append(index)
        else:
            agreement.differ.append(index)
    return agreement


@torch.no_grad()
def top2_margin(model: Transformer, src_ids: torch.Tensor, ours: list[int],
                theirs: list[int]) -> float:
    """mha's top-1 minus top-2 logit at the first position where `ours` and `theirs` differ
    (ending counts as choosing EOS). src_ids (1, S); outputs without BOS/EOS."""
    step = next((k for k, (a, b) in enumerate(zip(ours, theirs)) if a != b),
                min(len(ours), len(theirs)))
    tgt_in = torch.tensor([[Tokenizer.BOS, *ours[:step]]])  # (1, step + 1)
    logits = model(src_ids, tgt_in)[0, -1]  # (V,): the choice at `step`
    top = logits.topk(2).values
    return float(top[0] - top[1])
