"""Files that several packages read and write: atomic writes, UTF-8 lines with clear errors."""

from __future__ import annotations

import gzip
import os
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO


class DataError(Exception):
    """A corpus or data file that cannot be used; the message names the file and the problem."""


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call write(file) on a temporary file beside `path`, fsync, then rename over `path`.

    An interruption leaves either the old file or the new one, never half of one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the result should read like any file
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_lines(path: str | Path) -> list[str]:
    """Every line of a UTF-8 text file (plain or .gz), without line endings.

    Raises DataError naming the file (and line) when it is missing, not gzip or not UTF-8.
    """
    return list(iter_lines(Path(path)))


def iter_lines(path: Path) -> Iterator[str]:
    """Stream the lines of a UTF-8 file (plain or .gz); see `read_lines`."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            for number, raw in enumerate(file, 1):
                yield decode_line(raw, number, str(path))
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: cannot read: {error}") from error


def decode_line(raw: bytes, number: int, name: str = "stdin") -> str:
    """Line `number` of input `name` as text, without its line ending; DataError if not UTF-8."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{name}, line {number}: not UTF-8 "
                        f"({error.reason} at byte {error.start})") from error
    if number == 1:
        text = text.removeprefix("\ufeff")
    return text.rstrip("\r\n")


def write_lines(path: Path, lines: Iterable[str]) -> None:
    """Write one line per item, UTF-8, atomically (a hypotheses file, a translation)."""
    text = "".join(f"{line}\n" for line in lines).encode("utf-8")
    atomic_write(Path(path), lambda file: file.write(text))
