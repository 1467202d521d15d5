"""Shared fixtures: the Multi30k folder beside the repo, a small slice of it, an isolated cache."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

SMALL_LINES = 300
SMALL_SPLITS = ("train", "val", "test_2016_flickr")


@pytest.fixture(scope="session")
def multi30k_dir() -> Path:
    """../shared/data/multi30k relative to the repo root (read-only); skips when absent."""
    folder = Path(__file__).parents[1].parent / "shared/data/multi30k"
    if not (folder / "train.de.gz").is_file():
        pytest.skip(f"Multi30k files not found in {folder}")
    return folder


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
    """No test sees the user's Multi30k cache or $MHA_DATA_DIR, or reaches the internet."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg_cache")))
    monkeypatch.delenv("MHA_DATA_DIR", raising=False)
    monkeypatch.setenv("MHA_MULTI30K_URL", "http://127.0.0.1:9/no-network-in-tests")
