"""What a user watches during training: metrics.jsonl, a picture of the curves, TensorBoard."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

from mha.data.files import atomic_write

log = logging.getLogger(__name__)


class Monitor:
    """Appends one JSON object a line to run_dir/metrics.jsonl and redraws run_dir/curves.png.

    On resume, lines past the resumed step are dropped, so the file reads as one run.
    """

    def __init__(self, run_dir: Path, resumed_step: int | None = None) -> None:
        self.path, self.picture = run_dir / "metrics.jsonl", run_dir / "curves.png"
        self.records: list[dict] = []
        if resumed_step is not None and self.path.is_file():
            lines = self.path.read_text(encoding="utf-8").splitlines()
            records = map(json.loads, filter(None, lines))
            self.records = [r for r in records if r["step"] <= resumed_step]
        text = "".join(json.dumps(r) + "\n" for r in self.records)
        atomic_write(self.path, lambda file: file.write(text.encode()))
        self.file = self.path.open("a", encoding="utf-8")
        self.tensorboard = _tensorboard(run_dir)

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
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    log.info("TensorBoard events in %s", run_dir / "tensorboard")
    return SummaryWriter(str(run_dir / "tensorboard"))
