"""`mha compare`: runs side by side, from what each run folder records.

A run folder made by `mha train` holds config.yaml, tokenizer/, metrics.jsonl (training lines
with tokens_per_s; validation lines with val_loss and val_bleu; each with step and elapsed
seconds) and, once `mha eval` has run, eval/<split>.<decoding>.json.
"""

from __future__ import annotations

import base64
import html
import io
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure  # a bare Figure draws with Agg and leaves pyplot alone

from mha.configs.schema import Config, ConfigError, load_config
from mha.data.files import DataError, atomic_write
from mha.data.tokenizer import Tokenizer
from mha.model.info import parameter_count
from mha.training.monitor import read_metrics

# tokens/s: source + target tokens per second, the median of the windows metrics.jsonl logged
COLUMNS = ("run", "parameters", "h", "d_k", "layers", "updates", "tokens/s", "minutes",
           "best val BLEU (step)", "val BLEU at step {step}", "test BLEU")
SUFFIXES = (".png", ".html")


@dataclass
class Run:
    name: str
    cfg: Config
    parameters: int
    records: list[dict]
    test: tuple[float, str] | None  # test BLEU and its decoding (greedy, beam4, ...)

    @property
    def validations(self) -> list[dict]:
        return [r for r in self.records if "val_bleu" in r]

    @property
    def updates(self) -> int:
        return max((r["step"] for r in self.records), default=0)

    @property
    def minutes(self) -> float:
        return max((r["elapsed"] for r in self.records if "elapsed" in r),
                   default=0.0) / 60

    @property
    def tokens_per_s(self) -> float | None:
        speeds = [r["tokens_per_s"] for r in self.records if "tokens_per_s" in r]
        return statistics.median(speeds) if speeds else None

    @property
    def best(self) -> dict | None:
        """The validation record with the highest BLEU."""
        return max(self.validations, key=lambda r: r["val_bleu"], default=None)

    def bleu_at(self, step: int | None) -> float | None:
        return next((r["val_bleu"] for r in self.validations if r["step"] == step), None)

    def row(self, common: int | None) -> list[str]:
        """The table row; common is the step every run validated at (None: no such step)."""
        m, best, at_common = self.cfg.model, self.best, self.bleu_at(common)
        return [
            self.name, f"{self.parameters / 1e6:.2f}M", str(m.heads), str(m.d_model // m.heads),
            f"{m.encoder_layers}+{m.decoder_layers}", str(self.updates),
            f"{self.tokens_per_s:,.0f}" if self.tokens_per_s is not None else "-",
            f"{self.minutes:.1f}", f"{best['val_bleu']:.2f} ({best['step']})" if best else "-",
            f"{at_common:.2f}" if at_common is not None else "-",
            f"{self.test[0]:.2f} ({self.test[1]})" if self.test else "-",
        ]


def read_run(folder: Path) -> Run:
    """A run folder's config, size, metrics and test score. Raises DataError for a folder that
    is not a run (no config.yaml or metrics.jsonl) or holds unreadable files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"run folder {folder} does not exist")
    missing = [name for name in ("config.yaml", "metrics.jsonl", "tokenizer")
               if not (folder / name).exists()]
    if missing:
        raise DataError(f"{folder} is not a run folder: it has no {' or '.join(missing)} "
                        "(make one with `mha train`)")
    try:
        cfg = load_config(folder / "config.yaml")
    except ConfigError as error:
        raise DataError(f"{folder}/config.yaml: {error}") from None
    try:
        tokenizer = Tokenizer.load(folder / "tokenizer")
    except RuntimeError as error:  # SentencePiece refuses a damaged model file
        raise DataError(f"the tokenizer in {folder}/tokenizer does not load ({error})") from None
    parameters = parameter_count(cfg.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    return Run(str(folder), cfg, parameters, read_metrics(folder / "metrics.jsonl"),
               _test_bleu(folder / "eval"))


def _test_bleu(folder: Path) -> tuple[float, str] | None:
    """The test split's BLEU from `mha eval`: greedy when it was scored greedily, else the
    first beam size scored."""
    paths = sorted((p for p in folder.glob("test.*.json") if ".ensemble" not in p.stem),
                   key=lambda p: (p.stem != "test.greedy", p.stem))  # an ensemble is not the run
    if not paths:
        return None
    try:
        result = json.loads(paths[0].read_text(encoding="utf-8"))
        return float(result["bleu"]), paths[0].stem.removeprefix("test.")
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"{paths[0]} is not a result of `mha eval` ({error})") from None


def common_step(runs: list[Run]) -> int | None:
    """The largest step at which every run was validated: BLEU at equal updates."""
    steps = set.intersection(*({r["step"] for r in run.validations} for run in runs))
    return max(steps, default=None)


def runs_table(runs: list[Run]) -> str:
    """The runs as an aligned text table, one row each."""
    common = common_step(runs)
    header = [c.format(step=common if common is not None else "-") for c in COLUMNS]
    rows = [header] + [run.row(common) for run in runs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in rows)


def draw(runs: list[Run]) -> Figure:
    """Validation BLEU and loss against updates and against minutes, one line per run."""
    figure = Figure(figsize=(11, 7.5), layout="constrained")
    axes = figure.subplots(2, 2)
    for run in runs:
        val = run.validations
        label = f"{run.name} (h={run.cfg.model.heads})"
        for row, key in enumerate(("val_bleu", "val_loss")):
            axes[row][0].plot([r["step"] for r in val], [r[key] for r in val], "o-", ms=3,
                              label=label)
            axes[row][1].plot([r["elapsed"] / 60 for r in val], [r[key] for r in val], "o-",
                              ms=3, label=label)
    for row, what in enumerate(("validation BLEU (greedy)", "validation loss")):
        for col, x in enumerate(("updates", "minutes of training")):
            axes[row][col].set(xlabel=x, ylabel=what, title=f"{what} by {x.split()[0]}")
            axes[row][col].grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return figure


def compare(folders: list[Path], output: Path) -> str:
    """Write the picture (PNG) or a page with it and the table (HTML) to `output`, atomically;
    returns the table. Raises DataError for a folder that is not a run or a bad output path."""
    if output.suffix not in SUFFIXES:
        raise DataError(f"--output must end in {' or '.join(SUFFIXES)}, got {output.name}")
    if not output.parent.is_dir():
        raise DataError(f"cannot write {output}: folder {output.parent} does not exist")
    runs = [read_run(folder) for folder in folders]
    table = runs_table(runs)
    buffer = io.BytesIO()
    draw(runs).savefig(buffer, format="png", dpi=100)
    if output.suffix == ".png":
        data = buffer.getvalue()
    else:
        picture = base64.b64encode(buffer.getvalue()).decode("ascii")
        data = (f'<!DOCTYPE html><html lang="en"><meta charset="utf-8"><title>mha compare</title>'
                f'<body><img alt="validation curves" src="data:image/png;base64,{picture}">'
                f"<pre>{html.escape(table)}</pre></body></html>\n").encode()
    atomic_write(output, lambda file: file.write(data))
    return table
