"""What a user watches during training: the progress bar (loss, learning rate, tokens/s, padding,
time left), metrics.jsonl, a picture of the curves, TensorBoard."""

from __future__ import annotations

import io
import json
import logging
import math
import time
from pathlib import Path

from tqdm import tqdm

from mha.configs.schema import TrainConfig
from mha.data.files import DataError, atomic_write
from mha.training.state import Progress, Update
from mha.training.validate import Validation

log = logging.getLogger(__name__)


class Monitor:
    """Appends one JSON object a line to run_dir/metrics.jsonl and redraws run_dir/curves.png.

    On resume, lines past the resumed step are dropped, so the file reads as one run.
    """

    def __init__(self, run_dir: Path, resumed_step: int | None, settings: TrainConfig,
                 max_time: float = math.inf) -> None:
        self.log_every, self.max_time = settings.log_every, max_time
        self.max_steps = settings.max_steps
        self.bar = tqdm(total=self.max_steps, initial=resumed_step or 0, dynamic_ncols=True,
                        unit="step")
        self.window_tokens, self.window_start = 0, time.perf_counter()
        self.path, self.picture = run_dir / "metrics.jsonl", run_dir / "curves.png"
        self.records: list[dict] = []
        if resumed_step is not None and self.path.is_file():
            self.records = [r for r in read_metrics(self.path, drop_cut_last_line=True)
                            if r["step"] <= resumed_step]
        text = "".join(json.dumps(r) + "\n" for r in self.records)
        atomic_write(self.path, lambda file: file.write(text.encode()))
        self.file = self.path.open("a", encoding="utf-8")
        self.tensorboard = _tensorboard(run_dir)

    def report(self, progress: Progress, update: Update, lr: float) -> None:
        """The bar moves every update; its figures and a metrics line every `log_every`."""
        self.bar.update(1)
        self.window_tokens += update.tgt_tokens + update.src_tokens
        if progress.step % self.log_every and progress.step != 1:
            return
        speed = self.window_tokens / (time.perf_counter() - self.window_start)
        self.window_tokens, self.window_start = 0, time.perf_counter()
        budget = {} if math.isinf(self.max_time) else {
            "time_left": f"{max(0.0, self.max_time - progress.elapsed) / 60:.1f}m"}
        padding = 1 - (update.tgt_tokens + update.src_tokens) / update.slots
        self.bar.total = self.expected_end(progress)
        self.bar.set_postfix(loss=f"{update.loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{speed:,.0f}",
                             pad=f"{padding:.0%}", **budget)
        self.log({"step": progress.step, "loss": update.loss, "lr": lr,
                  "src_tokens": progress.src_tokens, "tgt_tokens": progress.tgt_tokens,
                  "elapsed": round(progress.elapsed, 2), "tokens_per_s": round(speed)})

    def expected_end(self, progress: Progress) -> int:
        """The update the run should end at, so that the bar's ETA is right: the linear schedule's
        plan; else, under max_time, the updates that fit in the time left at the rate so far."""
        if progress.plan_end:
            return progress.plan_end
        if math.isinf(self.max_time) or not progress.elapsed:
            return self.max_steps
        fits = (self.max_time - progress.elapsed) * progress.step / progress.elapsed
        return min(self.max_steps, progress.step + max(0, math.floor(fits)))

    def validated(self, progress: Progress, scores: dict) -> None:
        """A validation's metrics line, the curves redrawn, and its scores above the bar."""
        self.log({"step": progress.step, **scores, "elapsed": round(progress.elapsed, 2)})
        self.plot()
        raw = f" (raw weights {scores['raw_val_bleu']:.2f})" if "raw_val_bleu" in scores else ""
        self.bar.write(f"step {progress.step}: val_loss {scores['val_loss']:.3f}  val_bleu "
                   f"{scores['val_bleu']:.2f}{raw}  (best {progress.best_bleu:.2f} at step "
                   f"{progress.best_step})")

    def averaged(self, progress: Progress, result: Validation) -> None:
        """The validation of the averaged snapshots."""
        self.log({"step": progress.step, "averaged": len(progress.snapshots),
                  "averaged_val_loss": result.loss, "averaged_val_bleu": result.bleu})
        log.info("average of the last %d validation checkpoints: val BLEU %.2f (best single %.2f)",
                 len(progress.snapshots), result.bleu, progress.best_bleu)

    def log(self, record: dict) -> None:
        self.records.append(record)
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tensorboard is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(key, value, record["step"])

    def plot(self) -> None:
        """Training loss, validation loss and validation BLEU against the step."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        train = [r for r in self.records if "loss" in r]
        val = [r for r in self.records if "val_bleu" in r]
        figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        left.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
        left.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation")
        left.set(xlabel="step", ylabel="loss (label-smoothed cross-entropy)", title="Loss")
        left.legend()
        right.plot([r["step"] for r in val], [r["val_bleu"] for r in val], "o-", color="C2")
        right.set(xlabel="step", ylabel="sacreBLEU", title="Validation BLEU (greedy)")
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
        plt.close(figure)
        atomic_write(self.picture, lambda file: file.write(buffer.getvalue()))

    def close(self) -> None:
        self.bar.close()
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def read_metrics(path: Path, *, drop_cut_last_line: bool = False) -> list[dict]:
    """The records of a metrics.jsonl. Raises DataError naming a line that is not a record;
    with `drop_cut_last_line` (resuming), a last line that is not JSON, cut short by a full
    disk or a killed run, is dropped with a warning instead."""
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read {path} ({error})") from None
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line) if line.strip() else None
        except ValueError:
            if drop_cut_last_line and number == len(lines):
                log.warning("%s: dropped line %d, cut short by an interrupted run", path, number)
                continue
            record = {}
        if record is None:
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise DataError(f"{path}, line {number}: not a metrics record (JSON with a step)")
        records.append(record)
    return records


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    log.info("TensorBoard events in %s", run_dir / "tensorboard")
    return SummaryWriter(str(run_dir / "tensorboard"))
