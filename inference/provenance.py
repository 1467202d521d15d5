"""Where a run and its figures come from, so that figures from two machines can be explained:
the mha version and commit, torch, the device and CPU with the flags that decide bf16's speed,
the precision a run chose and the corpus files' SHA-256 sums.

`record_run` appends one entry to RUN/provenance.json each time training starts or resumes (a
resumed run may move to another machine); `mha eval` puts `environment` and that record into
its JSON.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import platform
import subprocess
import time
from pathlib import Path

import torch

from mha.configs.schema import DataConfig
from mha.data.corpus import corpus_files, hub_fingerprints
from mha.data.files import atomic_write

FILE = "provenance.json"
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")  # bf16 is native with these


def environment(device: torch.device) -> dict:
    """This process's code, libraries and machine."""
    cpu, flags = cpu_info()
    return {"mha": mha_version(), "torch": torch.__version__,
            "python": platform.python_version(), "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "cpu": cpu, "cpu_flags": [flag for flag in CPU_FLAGS if flag in flags],
            "threads": torch.get_num_threads()}


@functools.cache
def mha_version() -> str:
    """The installed version, with `git describe` when mha runs from a git checkout."""
    version = importlib.metadata.version("mha")
    source = Path(__file__).resolve().parents[1]
    if not (source / ".git").exists():
        return version
    try:
        described = subprocess.run(
            ["git", "-C", str(source), "describe", "--always", "--dirty", "--abbrev=12"],
            check=False, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version} ({described.stdout.strip()})" if described.returncode == 0 else version


@functools.cache
def cpu_info() -> tuple[str, frozenset[str]]:
    """The CPU's model name and flags (from /proc/cpuinfo; elsewhere the platform's name)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine(), frozenset()
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    return fields.get("model name", platform.machine()), frozenset(fields.get("flags", "").split())


def file_hashes(paths: list[Path]) -> dict[str, str]:
    """absolute path -> SHA-256 of its bytes."""
    hashes = {}
    for path in paths:
        digest = hashlib.sha256()
        with path.open("rb") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
        hashes[str(path.resolve())] = digest.hexdigest()
    return hashes


def record_run(run_dir: Path, step: int, device: torch.device, precision: str,
               corpus: dict[str, str], init_from: dict | None = None) -> dict:
    """Append this start (or resumption) at `step` to RUN/provenance.json; returns the entry.
    `init_from` names the run and checkpoint whose weights a new run starts from."""
    entry = {"step": step, "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
             **environment(device), "precision": precision, "corpus": corpus,
             **({"init_from": init_from} if init_from else {})}
    entries = read_run(run_dir) + [entry]
    text = json.dumps(entries, indent=1).encode("utf-8")
    atomic_write(Path(run_dir) / FILE, lambda file: file.write(text))
    return entry


def read_run(run_dir: Path) -> list[dict]:
    """The entries of RUN/provenance.json, oldest first ([] for a run from before it existed)."""
    path = Path(run_dir) / FILE
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError):
        return [{"unreadable": str(path)}]
    return entries if isinstance(entries, list) else [{"unreadable": str(path)}]


def corpus_record(data: DataConfig) -> dict[str, str]:
    """The corpus files' SHA-256 sums, or a hub dataset's own fingerprints by role."""
    files = [path for pair in corpus_files(data).values() for path in pair]
    return file_hashes(files) or {f"hub {role}": fingerprint
                                  for role, fingerprint in hub_fingerprints(data).items()}
