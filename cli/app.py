"""The `mha` command line: each command loads a config or run, calls one function, reports."""

from __future__ import annotations

import functools
import logging
import sys
import traceback
from importlib.metadata import version
from typing import Annotated

import typer
from tqdm import tqdm

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
    from mha.inference.eflomal_links import AlignError
    from mha.inference.export import ExportError
    from mha.training.loop import TrainingError

    return ConfigError, DataError, CheckpointError, TrainingError, ExportError, AlignError


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
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[_AboveTheBars(sys.stderr)])
    SESSION["debug"] = debug


class _AboveTheBars(logging.StreamHandler):
    """Writes through tqdm.write, which clears the progress bars, writes the line and redraws
    them: a log line never lands inside a bar."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=self.stream)


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


def main() -> None:
    app()


# the commands register themselves on `app` when imported
from mha.cli import making, scoring, serving, studying, using  # noqa: F401
