"""The corpus fixture: $MHA_DATA_DIR is honoured, a missing corpus is a named skip locally and a
failure under CI. Each case runs a one-test pytest session with conftest.py as a plugin."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
PROBE = '''
import os

def test_probe(multi30k_dir):
    print("corpus:", multi30k_dir, "env:", os.environ.get("MHA_DATA_DIR"))
'''


def run_probe(tmp_path: Path, data_dir: Path, ci: bool) -> subprocess.CompletedProcess:
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {key: value for key, value in os.environ.items()
           if key not in ("CI", "PYTEST_ADDOPTS")}
    env.update(PYTHONPATH=str(TESTS), MHA_DATA_DIR=str(data_dir), **({"CI": "true"} if ci else {}))
    command = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "conftest", "test_probe.py"]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.parametrize("ci", [False, True])
def test_a_missing_corpus_is_named_and_fails_under_ci(tmp_path: Path, ci: bool) -> None:
    missing = tmp_path / "no_corpus"
    result = run_probe(tmp_path, missing, ci)
    assert f"Multi30k files not found in {missing}" in result.stdout
    if ci:
        assert result.returncode == 1 and "CI=true needs the corpus" in result.stdout
    else:
        assert result.returncode == 0 and "1 skipped" in result.stdout
        assert f"1 tests skipped: Multi30k files not found in {missing}" in result.stdout


def test_mha_data_dir_is_where_tests_read_the_corpus(tmp_path: Path, multi30k_dir: Path) -> None:
    corpus = tmp_path / "elsewhere"
    corpus.mkdir()
    shutil.copy(multi30k_dir / "train.de.gz", corpus)
    result = run_probe(tmp_path, corpus, ci=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"corpus: {corpus} env: None" in result.stdout  # code under test does not see it


def test_a_missing_optional_extra_skips_but_fails_under_ci(monkeypatch) -> None:
    from helpers import optional

    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception, match="no_such_extra is not installed"):
        optional("no_such_extra")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no_such_extra is not installed"):
        optional("no_such_extra")
    assert optional("json").loads("[1]") == [1]
