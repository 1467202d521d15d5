"""The `mha` command line: each command loads a config or run, calls one function, reports."""

from __future__ import annotations

import functools
import logging
import sys
from importlib.metadata import version
from typing import Annotated, Optional

import typer

from mha.configs.schema import Config, ConfigError, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, run and score a from-scratch transformer translation model.")

ConfigArg = Annotated[str, typer.Argument(help="A YAML config path or a preset name (e.g. multi30k_de_en).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a key: --set model.heads=8 (repeatable).")]


def user_errors() -> tuple[type[Exception], ...]:
    """The project's own errors: shown as one line on stderr with exit code 2, no traceback."""
    from mha.data.corpus import DataError

    errors: list[type[Exception]] = [ConfigError, DataError]
    try:
        from mha.model.checkpoint import CheckpointError
        errors.append(CheckpointError)
    except ImportError:
        pass
    return tuple(errors)


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def config(path: str, overrides: Optional[list[str]]) -> Config:
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
) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(message)s", stream=sys.stderr)


def command(fn):
    """Register `fn` as a command whose user errors end as one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except user_errors() as error:
            fail(str(error).replace("\n", " "))

    return app.command()(run)


@command
def tokenize(
    config_path: ConfigArg,
    overrides: SetOpt = None,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Rebuild even if the cache matches.")] = False,
) -> None:
    """Train the SentencePiece tokenizer and encode every split into the run folder."""
    from mha.data.prepare import format_report, prepare  # datasets is slow to import

    cfg = config(config_path, overrides)
    prepared = prepare(cfg, rebuild=rebuild)
    typer.echo(format_report(prepared.report))
    typer.echo(f"tokenizer: {cfg.run_dir}/tokenizer  data: {cfg.run_dir}/data")


def main() -> None:
    app()
