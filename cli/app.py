"""The `mha` command line: each command loads a config or run, calls one function, reports."""

from __future__ import annotations

import functools
import logging
import sys
import traceback
from importlib.metadata import version
from pathlib import Path
from typing import Annotated

import typer

from mha.configs.schema import Config, ConfigError, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, run and score a from-scratch transformer translation model.")

ConfigArg = Annotated[str, typer.Argument(
    help="A YAML config path or a preset name (e.g. multi30k_de_en).")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a key: --set model.heads=8 (repeatable).")]
SESSION = {"debug": False}  # the root options a command needs, set by `root` on every call


def user_errors() -> tuple[type[Exception], ...]:
    """The project's own errors: shown as one line on stderr with exit code 2, no traceback."""
    from mha.data.files import DataError
    from mha.inference.checkpoint import CheckpointError
    from mha.training.loop import TrainingError

    return ConfigError, DataError, CheckpointError, TrainingError


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def config(path: str, overrides: list[str] | None) -> Config:
    return load_config(path, overrides or [])


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mha {version('mha')}")
        raise typer.Exit()


@app.callback()
def root(
    show_version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="Print the version and exit.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug detail.")] = False,
    debug: Annotated[bool, typer.Option(
        "--debug", envvar="MHA_DEBUG", help="On an error, print its traceback and causes before "
        "the one-line message (also MHA_DEBUG=1).")] = False,
) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    SESSION["debug"] = debug


def command(fn):
    """Register `fn` as a command whose user errors end as one line on stderr and exit code 2
    (after the full traceback, with the chain of causes, under --debug)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except user_errors() as error:
            if SESSION["debug"]:
                typer.echo("".join(traceback.format_exception(error)), err=True, nl=False)
            fail(str(error).replace("\n", " "))

    return app.command()(run)


@command
def tokenize(
    config_path: ConfigArg,
    overrides: SetOpt = None,
    rebuild: Annotated[bool, typer.Option(
        "--rebuild", help="Rebuild even if the cache matches.")] = False,
) -> None:
    """Train the SentencePiece tokenizer and encode every split into the run folder."""
    from mha.data.prepare import format_report, prepare  # datasets is slow to import

    cfg = config(config_path, overrides)
    prepared = prepare(cfg, rebuild=rebuild)
    typer.echo(format_report(prepared.report))
    typer.echo(f"tokenizer: {cfg.run_dir}/tokenizer  data: {cfg.run_dir}/data")


@command
def train(
    config_path: ConfigArg,
    overrides: SetOpt = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue from run_dir/checkpoints/last.pt.")] = False,
) -> None:
    """Train a transformer (tokenizing first when the run has no data). Works under torchrun."""
    from mha.training.loop import train as run_training

    cfg = config(config_path, overrides)
    progress = run_training(cfg, resume=resume).progress
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
) -> None:
    """Parameters and FLOPs per token by component, from the config alone (nothing is built)."""
    from mha.model.info import format_info

    cfg = config(config_path, overrides)
    size = vocab or cfg.data.vocab_size  # a joint vocabulary, or one of this size per side
    typer.echo(format_info(cfg.model, size, size, src_len, tgt_len))
    typer.echo(f"vocabulary: {size:,} {'joint' if cfg.data.joint_vocab else 'per side'}; "
               f"embeddings {'tied' if cfg.model.tie_embeddings else 'untied'}")


RunArg = Annotated[Path, typer.Argument(help="A run folder made by `mha train`.")]
CheckpointOpt = Annotated[str, typer.Option(
    "--checkpoint", help="best, last or a checkpoint path.")]
DeviceOpt = Annotated[str, typer.Option(
    "--device", help="auto (cuda when available), cpu or cuda.")]
BeamOpt = Annotated[int | None, typer.Option(
    "--beam", min=1, help="Beam size; 1 is greedy (default: the run's decode.beam).")]
BatchOpt = Annotated[int | None, typer.Option(
    "--batch-size", min=1, help="Sentences per batch (default: the run's decode.batch_size).")]


@command
def translate(
    run_dir: RunArg,
    texts: Annotated[list[str] | None, typer.Argument(
        help="Sentences; without them, --input or stdin.", show_default=False)] = None,
    input_file: Annotated[Path | None, typer.Option(
        "--input", help="Translate this file, a sentence a line.")] = None,
    output_file: Annotated[Path | None, typer.Option(
        "--output", help="Write here (atomically), not stdout.")] = None,
    which: CheckpointOpt = "best",
    batch_size: BatchOpt = None,
    beam: BeamOpt = None,
    no_cache: Annotated[bool, typer.Option(
        "--no-cache", help="Greedy without the KV cache (same output, slower).")] = False,
    device: DeviceOpt = "auto",
    attention: Annotated[Path | None, typer.Option(
        "--attention", help="Draw the sentence's attention into this PNG.")] = None,
    self_attention: Annotated[bool, typer.Option(
        "--self-attention", help="With --attention, draw self-attention too.")] = False,
) -> None:
    """Translate sentences from the arguments, a file or stdin: one output line per input line."""
    from mha.cli.stdin import stdin_chunks
    from mha.data.files import read_lines
    from mha.inference.run import load_model
    from mha.inference.translate import (
        translate_chunks,
        translate_lines,
        warn_unknown_characters,
        warn_unknown_in_chunks,
    )

    _check_sources(texts, input_file, attention, self_attention)
    lines = read_lines(input_file) if input_file else texts  # fails before the model loads
    model, tokenizer, cfg = load_model(run_dir, which, device)
    if lines is not None:
        warn_unknown_characters(tokenizer, lines, str(input_file or "the arguments"))
    options = {"batch_size": batch_size or cfg.decode.batch_size, "beam": beam or cfg.decode.beam,
               "use_cache": not no_cache, "decode_cfg": cfg.decode}
    if attention:
        from mha.inference.pictures import attention_weights, plot_attention

        weights = attention_weights(model, tokenizer, texts[0], cfg.decode, options["beam"])
        plot_attention(weights, attention, self_attention=self_attention)
        outputs = [weights.translation]  # decoded once, for the picture and the answer
    elif lines is not None:
        outputs = translate_lines(model, tokenizer, lines, **options)
    else:
        chunks = warn_unknown_in_chunks(tokenizer, stdin_chunks(options["batch_size"]))
        outputs = translate_chunks(model, tokenizer, chunks, **options)
    _emit(outputs, output_file)


def _check_sources(texts: list[str] | None, input_file: Path | None, attention: Path | None,
                   self_attention: bool) -> None:
    if texts and input_file:
        fail("give sentences as arguments or with --input FILE, not both")
    if (attention or self_attention) and (attention is None or len(texts or []) != 1):
        fail("--attention FILE.png draws one sentence: give exactly one TEXT "
             "(and --self-attention only with it)")


def _emit(lines, output_file: Path | None) -> None:
    """To stdout, flushed line by line (a pipe gets each answer as it is ready), or a file."""
    if output_file is None:
        for line in lines:
            typer.echo(line)
        return
    from mha.data.files import write_lines

    write_lines(output_file, lines)


@command
def explore(
    run_dir: RunArg,
    texts: Annotated[list[str] | None, typer.Argument(help="Sentences", show_default=False)] = None,
    input_file: Annotated[Path | None, typer.Option("--input", help="A sentence a line.")] = None,
    output_file: Annotated[Path | None, typer.Option(
        "--output", help="The page (default: RUN/explore.html).", show_default=False)] = None,
    beam: BeamOpt = None,
    which: CheckpointOpt = "best",
    device: DeviceOpt = "auto",
) -> None:
    """Write one self-contained HTML page that shows every attention weight, step by step."""
    from mha.data.files import read_lines
    from mha.inference.explore import explore as write_page

    _check_sources(texts, input_file, None, False)
    lines = read_lines(input_file) if input_file else texts or []
    output = output_file or run_dir / "explore.html"
    write_page(run_dir, lines, output, which=which, beam=beam, device=device,
               name=str(input_file or "the arguments"))
    typer.echo(f"{output}: {len(lines)} of at most 100 sentences; open it in a browser")


@command
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run folders made by `mha train`.")],
    output_file: Annotated[Path, typer.Option(
        "--output", help="A picture (.png), or a page with a table (.html)")] = Path("compare.png"),
) -> None:
    """Runs side by side: validation BLEU and loss by updates and by minutes, and a table."""
    from mha.training.compare import compare as compare_runs

    typer.echo(f"{compare_runs(run_dirs, output_file)}\ncurves in {output_file}")


@command
def eval(  # the command's name; shadows the builtin only inside this module
    run_dir: RunArg,
    split: Annotated[str, typer.Option(
        "--split", help="The run's prepared split to score: test or val.")] = "test",
    src_file: Annotated[Path | None, typer.Option(
        "--src-file", help="Score these sources instead of a split.")] = None,
    ref_file: Annotated[Path | None, typer.Option(
        "--ref-file", help="References for --src-file, line by line.")] = None,
    output_file: Annotated[Path | None, typer.Option(
        "--output", help="Hypotheses file (default: RUN/eval/SPLIT.greedy.hyp or .beamN.hyp).",
        show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    beam: BeamOpt = None,
    batch_size: BatchOpt = None,
    which: CheckpointOpt = "best",
    device: DeviceOpt = "auto",
) -> None:
    """Translate a test set and score it with sacreBLEU (BLEU and chrF, with their signatures)."""
    import json

    from mha.inference.evaluate import eval_set, evaluate
    from mha.inference.run import load_model
    from mha.inference.translate import warn_unknown_characters

    model, tokenizer, cfg = load_model(run_dir, which, device)
    sources, references, name = eval_set(run_dir, split, src_file, ref_file)
    warn_unknown_characters(tokenizer, sources, str(src_file or f"the {split} split"))
    beam = beam or cfg.decode.beam
    decoding = "greedy" if beam == 1 else f"beam{beam}"
    hyp_path = output_file or run_dir / "eval" / f"{name}.{decoding}.hyp"
    result_path = run_dir / "eval" / f"{name}.{decoding}.json"  # read by `mha compare`
    result = evaluate(model, tokenizer, sources, references, beam=beam, decode_cfg=cfg.decode,
                      batch_size=batch_size or cfg.decode.batch_size, hyp_path=hyp_path,
                      result_path=result_path)
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(f"{result['bleu_text']}\n  {result['signature']['bleu']}")
    typer.echo(f"{result['chrf_text']}\n  {result['signature']['chrf']}")
    typer.echo(f"{result['sentences']} sentences in {result['seconds']:.1f} s "
               f"({result['sentences_per_second']} sentences/s); hypotheses in {hyp_path}, "
               f"scores in {result_path}")


def main() -> None:
    app()
