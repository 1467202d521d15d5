"""Shared fixtures: the Multi30k folder ($MHA_DATA_DIR, else ../shared/data/multi30k beside the
repo), a small slice of it, an isolated cache."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

SMALL_LINES = 300
SMALL_SPLITS = ("train", "val", "test_2016_flickr")
# read once, at import: each test then runs without $MHA_DATA_DIR (see _isolated_env)
MULTI30K = Path(os.environ.get("MHA_DATA_DIR")
                or Path(__file__).parents[1].parent / "shared/data/multi30k").expanduser().resolve()
MISSING = (f"Multi30k files not found in {MULTI30K} (set MHA_DATA_DIR to the folder that holds "
           "train.de.gz)")


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1")


@pytest.fixture(scope="session")
def multi30k_dir() -> Path:
    """The Multi30k folder (read-only). Missing, it skips the test, naming the folder; under
    CI=true it fails it: a green CI run must have tested the pipeline on real data."""
    if not (MULTI30K / "train.de.gz").is_file():
        if under_ci():
            pytest.fail(f"{MISSING}; CI=true needs the corpus", pytrace=False)
        pytest.skip(MISSING)
    return MULTI30K


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say it after the run too: `-q` shows a count of skips, not why."""
    skipped = [report for report in terminalreporter.stats.get("skipped", [])
               if MISSING in str(report.longrepr)]
    if skipped:
        terminalreporter.write_line(f"{len(skipped)} tests skipped: {MISSING}", yellow=True)


@pytest.fixture(scope="session")
def small_corpus(multi30k_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of plain `{split}.{lang}` files: the first 300 de/en lines of each split.

    Shared by the whole session: copy it before changing anything in it.
    """
    folder = tmp_path_factory.mktemp("small_corpus")
    for split in SMALL_SPLITS:
        for lang in ("de", "en"):
            with gzip.open(multi30k_dir / f"{split}.{lang}.gz", "rt", encoding="utf-8") as file:
                lines = [next(file) for _ in range(SMALL_LINES)]
            (folder / f"{split}.{lang}").write_text("".join(lines), encoding="utf-8")
    return folder


@pytest.fixture(scope="session", autouse=True)
def _datasets_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep the Arrow files tests make out of the user's ~/.cache/huggingface."""
    import datasets

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf_datasets"))
        yield


@pytest.fixture(autouse=True)
def _isolated_env(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No code under test sees the user's Multi30k cache or $MHA_DATA_DIR (tests that need the
    corpus take `multi30k_dir`), or reaches the internet."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg_cache")))
    monkeypatch.delenv("MHA_DATA_DIR", raising=False)
    monkeypatch.setenv("MHA_MULTI30K_URL", "http://127.0.0.1:9/no-network-in-tests")
