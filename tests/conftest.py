"""Shared fixtures: the Multi30k folder ($MHA_DATA_DIR, else ../shared/data/multi30k beside the
repo), a small slice of it, an isolated cache, one tiny trained run per session (loaded, or
copied), one torch thread, and the explore page's browser. Helpers that are not fixtures live in
helpers.py."""

from __future__ import annotations

import gzip
import importlib.util
import os
import shutil
import signal
from pathlib import Path

import pytest

SMALL_LINES = 300
SMALL_SPLITS = ("train", "val", "test_2016_flickr")
# read once, at import: each test then runs without $MHA_DATA_DIR (see _isolated_env)
MULTI30K = Path(os.environ.get("MHA_DATA_DIR")
                or Path(__file__).parents[1].parent / "shared/data/multi30k").expanduser().resolve()
CHROMIUM = Path("/usr/bin/chromium")  # the page tests' browser, driven by Playwright
CHROMIUM_ARGS = ["--disable-background-networking", "--no-sandbox", "--disable-gpu",
                 "--no-first-run", "--disable-component-update", "--disable-sync"]
# helpers.py (torch, the CLI) is imported by the fixtures that need it: test_conftest.py runs this
# file in pytest subprocesses, which then start in a second, not in several
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


@pytest.fixture(scope="session")
def tiny_run(small_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run folder trained by `make_tiny_run`, shared by the session: copy it (`run_copy`)
    before changing anything in it."""
    from helpers import make_tiny_run

    return make_tiny_run(tmp_path_factory.mktemp("tiny_run"), small_corpus)


@pytest.fixture(scope="session")
def loaded(tiny_run: Path):
    """The tiny run's (model, tokenizer, config), as `mha translate` loads them."""
    from mha.inference.run import load_model

    return load_model(tiny_run)


@pytest.fixture
def run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


@pytest.fixture(scope="module")
def _one_thread():
    """A module asks for it with `pytestmark = pytest.mark.usefixtures("_one_thread")`."""
    from helpers import one_thread

    with one_thread():
        yield


@pytest.fixture(scope="session", autouse=True)
def _no_server_left():
    """A test that fails before its stop_server leaves its `mha serve` running: killed when the
    session ends (its decoding process then finds its pipe closed and exits)."""
    yield
    me = os.getpid()
    for child in Path(f"/proc/{me}/task/{me}/children").read_text().split():
        try:
            if b"serve" in Path(f"/proc/{child}/cmdline").read_bytes():
                os.kill(int(child), signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError):  # it ended meanwhile
            pass


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.is_file() or importlib.util.find_spec("playwright") is None:
        message = (f"the page tests need Chromium at {CHROMIUM} (apt-get install chromium) and "
                   "the playwright package (pip install -e '.[test]')")
        if under_ci():
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def explored(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The page of the tiny run for TEXTS, written by the command."""
    from helpers import TEXTS, invoke, one_thread

    page = tmp_path_factory.mktemp("explore") / "page.html"
    with one_thread():
        result = invoke("explore", tiny_run, *TEXTS, "--output", page, "--device", "cpu")
    assert result.exit_code == 0, result.output
    return page


@pytest.fixture
def open_page(browser):
    """open_page(path) -> Opened: the page loaded from file://, its requests and errors recorded."""
    from helpers import Opened

    contexts = []

    def opened(path: Path) -> Opened:
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        contexts.append(context)
        page = context.new_page()
        record = Opened(page, [], [])
        page.on("request", lambda request: record.requests.append(request.url))
        page.on("console", lambda m: record.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda error: record.errors.append(str(error)))
        page.goto(path.as_uri())
        page.wait_for_function("window.mhaState !== undefined")
        return record

    yield opened
    for context in contexts:
        context.close()


@pytest.fixture(scope="session")
def served(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory):
    """`mha serve` on the tiny run, on a free loopback port, with small limits (8 sentences of
    at most 200 characters); stopped with SIGTERM at the end of the session."""
    from helpers import start_server, stop_server, wait_until

    server = start_server(tiny_run, tmp_path_factory.mktemp("served"), "--max-sentences", "8",
                          "--max-chars", "200")
    wait_until(lambda: server.get("/health")[1]["warm"], "the running batch's process")
    yield server
    stop_server(server)
