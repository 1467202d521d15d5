"""The JSON reports analysis commands keep in a run folder (RUN/heads.json, RUN/align.json):
written atomically with floats rounded, read back as data and checked against a pydantic model."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ValidationError

from mha.data.files import atomic_write


class ReportError(Exception):
    """A stored report that cannot be read or fails its check; the message says where."""


def rounded(value: object) -> object:
    """Floats to 6 decimals, so the JSON reads well and equal runs write equal files."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item) for item in value]
    return value


def write_report(path: Path, report: dict) -> Path:
    """`report` as JSON at `path`, written atomically."""
    text = json.dumps(rounded(report), indent=1).encode("utf-8")
    atomic_write(path, lambda file: file.write(text))
    return path


def read_report(path: Path, schema: type[BaseModel]) -> BaseModel:
    """The report at `path` checked against `schema`; ReportError naming the first problem."""
    try:
        return schema.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReportError(f"cannot be read ({error})") from error
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(map(str, first["loc"])) or "the file"
        more = error.error_count() - 1
        raise ReportError(f"{where}: {first['msg']}" + (f" (and {more} more)" if more else "")
                          ) from error
