"""Reading sentences at the command line: stdin in chunks as lines arrive, or a prompt at a
terminal. A pipe that writes one line and waits for its answer gets it (no deadlock)."""

from __future__ import annotations

import itertools
import os
import select
import sys
from collections.abc import Iterator
from typing import BinaryIO

import typer

from mha.data.files import decode_line
from mha.inference.translate import CHUNK_BATCHES, chunked

READ_WINDOW = 0.01  # seconds a pipe may pause inside a burst of lines that still count as one
READ_BLOCK = 1 << 16


def stdin_chunks(batch_size: int) -> Iterator[list[str]]:
    """Chunks of stdin's lines: one per line typed at a terminal, else as they arrive."""
    if sys.stdin.isatty():
        return prompted()
    return read_chunks(sys.stdin.buffer, batch_size * CHUNK_BATCHES)


def prompted() -> Iterator[list[str]]:
    """One chunk per line typed at the terminal, until end of input (Ctrl-D)."""
    for number in itertools.count(1):
        typer.echo("> ", err=True, nl=False)
        raw = sys.stdin.buffer.readline()
        if not raw:
            typer.echo(err=True)
            return
        yield [decode_line(raw, number)]


def read_chunks(stream: BinaryIO, max_lines: int, name: str = "stdin") -> Iterator[list[str]]:
    """Lines of a binary stream, in chunks of at most max_lines, each as soon as it has arrived.

    From a pipe: wait for one line, then take only the lines already there (or arriving within
    READ_WINDOW). A stream without a file descriptor is read in full chunks. Raises DataError
    naming the line that is not UTF-8.
    """
    try:
        arrivals = _arrivals(stream.fileno())
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        arrivals = chunked(iter(stream), max_lines)
    numbers = itertools.count(1)
    for raw_lines in arrivals:
        texts = [decode_line(raw, next(numbers), name) for raw in raw_lines]
        for start in range(0, len(texts), max_lines):
            yield texts[start:start + max_lines]


def _arrivals(fd: int) -> Iterator[list[bytes]]:
    """Complete lines from fd, a list per burst: block for data, then take what is ready."""
    partial = b""
    while True:
        data = os.read(fd, READ_BLOCK)
        eof = not data
        while data and len(data) < READ_BLOCK * 16 and select.select([fd], [], [], READ_WINDOW)[0]:
            more = os.read(fd, READ_BLOCK)
            eof = not more
            if eof:
                break
            data += more
        *lines, partial = (partial + data).split(b"\n")
        if eof and partial:
            lines.append(partial)
        if lines:
            yield lines
        if eof:
            return


