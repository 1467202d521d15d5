"""Choose the beam size and length penalty on the validation split, and keep the choice in the run.

`mha tune-decode RUN` translates the val split once per (beam, length penalty), scores each with
sacreBLEU (cased, the metric training validates with) and writes the best to RUN/decode.yaml.
`load_model` applies that file, so `mha eval RUN` and `mha translate RUN` decode the tuned way
unless --beam says otherwise. The test split is never used here: a choice made on it would
flatter the test score.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path

import yaml

from mha.configs.schema import Config, ConfigError, DecodeConfig, from_dict, to_dict
from mha.data.files import atomic_write
from mha.data.tokenizer import Tokenizer
from mha.inference import checkpoint
from mha.inference.evaluate import score
from mha.inference.translate import MhaEngine, translate_lines
from mha.model.transformer import Transformer

log = logging.getLogger(__name__)

TUNED_FILE = "decode.yaml"  # inside the run folder
HEADER = ("# written by `mha tune-decode`: the beam and length penalty that scored the highest "
          "cased BLEU on the val split;\n# `mha eval` and `mha translate` use them unless "
          "--beam is given; delete this file to go back to the config's decode section\n")


@dataclasses.dataclass(frozen=True)
class Trial:
    beam: int
    length_penalty: float
    bleu: float  # cased, on the val split
    bleu_lc: float  # lowercased
    seconds: float  # decoding time (a greedy trial is shared by every penalty)


def parse_grid(beams: str, penalties: str) -> tuple[list[int], list[float]]:
    """'1,4,5' and '0.6,1.0' -> ([1, 4, 5], [0.6, 1.0]); ConfigError for anything else."""
    try:
        beam_list = [int(b) for b in beams.split(",")]
        penalty_list = [float(p) for p in penalties.split(",")]
    except ValueError:
        raise ConfigError(f"--beams takes whole numbers and --penalties numbers, comma-separated "
                          f"(e.g. --beams 1,5 --penalties 0.6,1.0), got {beams!r} and "
                          f"{penalties!r}") from None
    problems = [f"beam sizes must be >= 1, got {b}" for b in beam_list if b < 1]
    problems += [f"length penalties must be >= 0, got {p}" for p in penalty_list
                 if not 0 <= p < math.inf]
    if problems:
        raise ConfigError("; ".join(problems))
    return sorted(set(beam_list)), sorted(set(penalty_list))


def tune(
    model: Transformer, tokenizer: Tokenizer, sources: list[str], references: list[str], *,
    beams: list[int], penalties: list[float], decode_cfg: DecodeConfig, batch_size: int,
) -> list[Trial]:
    """Score every (beam, length penalty) on sources/references; beam 1 (greedy ignores the
    penalty) is decoded once and reported under every penalty."""
    trials = []
    for beam in beams:
        for penalty in penalties[:1] if beam == 1 else penalties:
            cfg = dataclasses.replace(decode_cfg, length_penalty=penalty)
            start = time.perf_counter()
            hypotheses = list(translate_lines(MhaEngine(model, tokenizer, cfg), sources,
                                              batch_size=batch_size, beam=beam))
            seconds = time.perf_counter() - start
            scores = score(hypotheses, references)
            log.info("beam %d, length penalty %g: BLEU %.2f (lowercased %.2f), %.1f s",
                     beam, penalty, scores["bleu"], scores["bleu_lc"], seconds)
            runs = penalties if beam == 1 else [penalty]
            trials += [Trial(beam, p, scores["bleu"], scores["bleu_lc"], seconds) for p in runs]
    return trials


def best(trials: list[Trial]) -> Trial:
    """The highest BLEU; ties go to the smaller beam (faster), then the penalty nearest 1."""
    return max(trials, key=lambda t: (t.bleu, -t.beam, -abs(t.length_penalty - 1.0)))


def choose(trials: list[Trial]) -> DecodeConfig:
    """The best trial's beam. Its penalty, or when greedy wins, the best beam search's penalty,
    so that an explicit --beam N still decodes with a tuned penalty."""
    winner = best(trials)
    searches = [t for t in trials if t.beam > 1]
    penalty = best(searches).length_penalty if searches else winner.length_penalty
    return DecodeConfig(beam=winner.beam, length_penalty=penalty)


def format_table(trials: list[Trial]) -> str:
    """Val BLEU by beam (rows) and length penalty (columns); the chosen cell is starred (the whole
    row when greedy wins: it ignores the penalty)."""
    penalties = sorted({t.length_penalty for t in trials})
    chosen = best(trials)
    starred = {t for t in trials if t == chosen or t.beam == chosen.beam == 1}
    lines = ["| beam \\ length penalty | " + " | ".join(f"{p:g}" for p in penalties) + " |",
             "|---" * (len(penalties) + 1) + "|"]
    for beam in sorted({t.beam for t in trials}):
        row = {t.length_penalty: t for t in trials if t.beam == beam}
        cells = [f"{row[p].bleu:.2f}" + ("*" if row[p] in starred else "") if p in row else "-"
                 for p in penalties]
        lines.append(f"| {'1 (greedy)' if beam == 1 else beam} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def describe(choice: DecodeConfig) -> str:
    if choice.beam > 1:
        return f"beam {choice.beam}, length penalty {choice.length_penalty:g}"
    return f"greedy (beam 1; a --beam N decodes with length penalty {choice.length_penalty:g})"


def save_choice(run_dir: Path, trials: list[Trial], which: str = "best") -> Path:
    """Write the chosen beam and penalty, and what they scored with which checkpoint (best,
    last or a path) at which step, atomically to RUN/decode.yaml."""
    choice, winner = choose(trials), best(trials)
    step = checkpoint.load(checkpoint.resolve(Path(run_dir), which))["step"]
    record = {"beam": choice.beam, "length_penalty": choice.length_penalty,
              "val_bleu": round(winner.bleu, 2), "val_bleu_lc": round(winner.bleu_lc, 2),
              "checkpoint": which, "step": step}
    path = Path(run_dir) / TUNED_FILE
    text = HEADER + yaml.safe_dump(record, sort_keys=False)
    atomic_write(path, lambda file: file.write(text.encode("utf-8")))
    return path


def apply_tuned(cfg: Config, run_dir: Path, step: int) -> Config:
    """`cfg` with RUN/decode.yaml's beam and length penalty, when the run has one.

    Raises ConfigError naming the file when it is not YAML or holds unusable values.
    """
    path = Path(run_dir) / TUNED_FILE
    if not path.is_file():
        return cfg
    try:
        record = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid YAML ({error})".replace("\n", " ")) from None
    if not isinstance(record, dict) or not {"beam", "length_penalty"} <= record.keys():
        raise ConfigError(f"{path}: expected beam and length_penalty (rerun mha tune-decode, or "
                          "delete the file)")
    raw = to_dict(cfg)
    raw["decode"].update(beam=record["beam"], length_penalty=record["length_penalty"])
    try:
        tuned = from_dict(raw)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    if record.get("step") not in (None, step):
        log.warning("%s was tuned on the checkpoint of step %s; this one is step %s (rerun "
                    "mha tune-decode to tune it again)", path, record["step"], step)
    return tuned
