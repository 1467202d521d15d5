"""Translate with an exported CTranslate2 model (`--engine ctranslate2`), the way mha does.

Lines become mha's source ids (the same SentencePiece model, the same cut at the model's
positions), go to CTranslate2 as pieces, and come back as ids that mha's own code turns into
text. Outputs are capped at a * S + b tokens like mha's (S the source's ids, EOS included).
CTranslate2 takes one cap per batch: greedy batches decode up to their longest sentence's cap
and each output is then cut to its own, which is exact, since greedy tokens do not depend on
where decoding will stop; beam search ranks endings by the cap, so its batches hold sentences
with one cap.

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
from mha.model.decode import greedy, length_limits
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
        self.max_tokens = self.cfg.model.max_tokens
        on = pick_device(device, cuda=ct2.get_cuda_device_count() > 0).type
        try:
            self.translator = ct2.Translator(str(self.folder), device=on,
                                             compute_type=compute_type,
                                             intra_threads=threads or torch.get_num_threads())
        except (RuntimeError, ValueError) as error:
            raise ExportError(f"CTranslate2 cannot load {self.folder}: {error}") from None

    def batch_keys(self, sources: list[list[int]], *, beam: int) -> list[int]:
        """Beam search ranks endings by the length cap: its batches hold sentences with one cap
        (sources come sorted by length, so equal caps are neighbours)."""
        return self.length_caps(sources) if beam > 1 and sources else [0] * len(sources)

    def score_ids(self, sources: list[list[int]], outputs: list[list[int]]) -> list[float]:
        """CTranslate2's teacher-forced log-probabilities of each output and EOS, summed."""
        results = self.translator.score_batch(
            [[self.source_pieces[t] for t in ids[:-1]] for ids in sources],  # </s> is added back
            [[self.target_pieces[t] for t in ids] for ids in outputs], max_input_length=0)
        return [sum(result.log_probs) for result in results]

    def decode_ids(self, sources: list[list[int]], *, beam: int) -> list[list[int]]:
        """Source ids (ending in EOS) -> output ids without EOS, each within its length cap."""
        caps = self.length_caps(sources)
        results = self.translator.translate_batch(
            [[self.source_pieces[t] for t in ids[:-1]] for ids in sources],  # </s> is added back
            beam_size=beam, length_penalty=self.cfg.decode.length_penalty, max_input_length=0,
            min_decoding_length=0, max_decoding_length=max(caps))
        return [[self.target_ids[piece] for piece in result.hypotheses[0]][:cap]
                for result, cap in zip(results, caps)]

    def length_caps(self, sources: list[list[int]]) -> list[int]:
        """mha's cap per source: a * S + b tokens, within the model's positions."""
        lengths = torch.tensor([len(ids) for ids in sources])  # (B,)
        padding = torch.arange(int(lengths.max()))[None, :] >= lengths[:, None]  # (B, S)
        decode = self.cfg.decode
        return length_limits(padding, decode.max_len_a, decode.max_len_b,
                             self.cfg.model.max_tokens).tolist()


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
                      max_len_a=decode.max_len_a, max_len_b=decode.max_len_b)[0]
        theirs = engine.decode_ids([ids], beam=1)[0]
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
