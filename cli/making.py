"""Commands that make a model: tokenize, train, info, compare."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mha.cli.app import ConfigArg, SetOpt, command, config


@command
def tokenize(
    config_path: ConfigArg,
    overrides: SetOpt = None,
    rebuild: Annotated[bool, typer.Option(
        "--rebuild", help="Rebuild even if the cache matches.")] = False,
) -> None:
    """Train the SentencePiece tokenizer and encode every split into the run folder."""
    from mha.data.prepare import format_report, prepare  # datasets is slow to import
    from mha.data.runlock import run_lock

    cfg = config(config_path, overrides)
    with run_lock(cfg.run_dir, "tokenize"):
        prepared = prepare(cfg, rebuild=rebuild)
    typer.echo(format_report(prepared.report))
    typer.echo(f"tokenizer: {cfg.run_dir}/tokenizer  data: {cfg.run_dir}/data")


@command
def train(
    config_path: ConfigArg,
    overrides: SetOpt = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue from run_dir/checkpoints/last.pt.")] = False,
    init_from: Annotated[str | None, typer.Option(
        "--init-from", help="Start from this run's weights and tokenizer, RUN[:best|last|PATH] "
        "(fine-tuning); optimizer and schedule start fresh.", show_default=False)] = None,
) -> None:
    """Train a transformer (tokenizing first when the run has no data). Works under torchrun."""
    from mha.training.loop import train as run_training

    cfg = config(config_path, overrides)
    progress = run_training(cfg, resume=resume, init_from=init_from).progress
    typer.echo(f"best validation BLEU {progress.best_bleu:.2f} at step {progress.best_step}; "
               f"checkpoints in {cfg.run_dir}/checkpoints")


@command
def info(
    config_path: ConfigArg,
    overrides: SetOpt = None,
    src_len: Annotated[float, typer.Option(
        "--src-len", min=1, help="Mean source length in tokens (attention scores grow with "
        "it).")] = 16,
    tgt_len: Annotated[float, typer.Option(
        "--tgt-len", min=1, help="Mean target length in tokens.")] = 16,
    vocab: Annotated[int | None, typer.Option(
        "--vocab", min=1, help="Vocabulary size per side (default: data.vocab_size).",
        show_default=False)] = None,
    measure: Annotated[bool, typer.Option(
        "--measure", help="Also build one attention block at every head count: torch's FLOP "
        "count and its time, side by side.")] = False,
) -> None:
    """Parameters and FLOPs per token by component, from the config alone; --measure also builds
    one attention block per head count and counts and times it."""
    from mha.model.info import format_info, format_measured, measure_heads

    cfg = config(config_path, overrides)
    size = vocab or cfg.data.vocab_size  # a joint vocabulary, or one of this size per side
    typer.echo(format_info(cfg.model, size, size, src_len, tgt_len))
    typer.echo(f"vocabulary: {size:,} {'joint' if cfg.data.joint_vocab else 'per side'}; "
               f"embeddings {'tied' if cfg.model.tie_embeddings else 'untied'}")
    if measure:
        length = round(src_len)
        typer.echo(format_measured(measure_heads(cfg.model.d_model, length), cfg.model.d_model,
                                   length))


@command
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run folders made by `mha train`.")],
    output_file: Annotated[Path, typer.Option(
        "--output", help="A picture (.png), or a page with a table (.html)")] = Path("compare.png"),
) -> None:
    """Runs side by side: validation BLEU and loss by updates and by minutes, and a table."""
    from mha.training.compare import compare as compare_runs

    typer.echo(f"{compare_runs(run_dirs, output_file)}\ncurves in {output_file}")
