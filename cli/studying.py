"""Commands that study a trained model's attention: heads (which heads matter, what they look
at) and align (how well attention aligns words)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mha.cli.app import command
from mha.cli.using import CheckpointOpt, DeviceOpt, RunArg


@command
def heads(
    run_dir: RunArg,
    split: Annotated[str, typer.Option(
        "--split", help="The run's prepared split to measure on: val or test.")] = "val",
    limit: Annotated[int | None, typer.Option(
        "--limit", help="Use only the split's first N sentences (faster).",
        show_default=False)] = None,
    which: CheckpointOpt = "best",
    device: DeviceOpt = "auto",
) -> None:
    """Each attention head's importance (loss and greedy BLEU with it removed, and the gradient
    estimate), its role and entropy, and the pruning curve; writes RUN/heads.json and a picture,
    RUN/heads.png."""
    from mha.inference.heads import format_report, measure_heads, write_report
    from mha.inference.heads_picture import write_picture

    report = measure_heads(run_dir, split, limit, which, device)
    path, picture = write_report(run_dir, report), write_picture(run_dir, report)
    typer.echo(f"{format_report(report)}\nwritten to {path} and {picture}")


@command
def align(
    run_dir: RunArg,
    split: Annotated[str, typer.Option(
        "--split", help="The run's prepared split to align: test or val.")] = "test",
    limit: Annotated[int | None, typer.Option(
        "--limit", help="Score only the split's first N sentences.", show_default=False)] = None,
    gold: Annotated[Path | None, typer.Option(
        "--gold", help="Human links to score against instead of eflomal's: one Pharaoh line per "
        "sentence, i-j sure, i-pj possible (0-based words).", show_default=False)] = None,
    which: CheckpointOpt = "best",
    device: DeviceOpt = "auto",
) -> None:
    """How well does attention align words? AER, precision and recall of every encoder-decoder
    head, each layer's heads averaged and Shift-Att, against eflomal's links (or --gold);
    writes RUN/align.json."""
    from mha.inference.align import format_report, measure_alignment, write_report

    report = measure_alignment(run_dir, split, limit, gold, which, device)
    path = write_report(run_dir, report)
    typer.echo(f"{format_report(report)}\nwritten to {path}")
