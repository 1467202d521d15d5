"""`mha score`: the model's log-probability of given translations, and their perplexity."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mha.cli.app import command, fail
from mha.cli.engines import check_engine, open_engine
from mha.cli.using import BatchOpt, CheckpointOpt, DeviceOpt, EngineOpt, RunArg


@command
def score(
    run_dir: RunArg,
    src_file: Annotated[Path | None, typer.Option(
        "--src-file", help="Sources, a sentence a line.", show_default=False)] = None,
    tgt_file: Annotated[Path | None, typer.Option(
        "--tgt-file", help="Their translations to score, line by line.", show_default=False)
    ] = None,
    tokens: Annotated[bool, typer.Option(
        "--tokens", help="Each subword's log-probability too.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    batch_size: BatchOpt = None,
    which: CheckpointOpt = "best",
    device: DeviceOpt = "auto",
    engine: EngineOpt = "mha",
) -> None:
    """Score given translations (from --src-file and --tgt-file, or stdin as source<TAB>target
    lines): per pair its log-probability, per token and perplexity, teacher-forced; the last
    line is the perplexity of the whole set."""
    from mha.cli.stdin import stdin_chunks
    from mha.inference.score import read_pairs, report_json, report_lines, score_pairs, split_pairs

    check_engine(engine)
    if (src_file is None) != (tgt_file is None):
        fail("give both --src-file and --tgt-file, or neither (then pairs come from stdin, "
             "source<TAB>target a line)")
    if src_file is not None:
        sources, targets = read_pairs(src_file, tgt_file)
    else:
        sources, targets = split_pairs([line for chunk in stdin_chunks(1) for line in chunk])
    scorer, decode = open_engine(run_dir, engine, which, device)
    scored = score_pairs(scorer, sources, targets, batch_size=batch_size or decode.batch_size,
                         name=str(tgt_file or "stdin"))
    if as_json:
        typer.echo(report_json(scored, tokens=tokens))
        return
    for line in report_lines(scored, tokens=tokens):
        typer.echo(line)
