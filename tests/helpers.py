"""What the test modules share besides fixtures (those are in conftest.py): the tiny training
config, the one helper that trains a tiny run, the CLI and its one-error-line check, one torch
thread, torchrun with a hang limit, the explore page's controls and a `mha serve` process. Not a
test module: pytest collects nothing here."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mha.cli.app import app
from mha.configs.schema import Config, dump, load_config
from mha.training.loop import train
from mha.training.monitor import read_metrics

SENTENCES = ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee.",
             "Eine Frau mit einem roten Hut sitzt auf einer Bank."]
TINY = ["data.vocab_size=200", "model.d_model=32", "model.heads=2", "model.d_ff=64",
        "train.batch_tokens=400", "train.warmup_steps=4", "train.eval_every=100",
        "train.log_every=1", "decode.max_len_a=0.5", "decode.max_len_b=4", "decode.batch_size=100"]
WORKER = Path(__file__).parent / "ddp_worker.py"
OOV = "Ein Mann 日本 ß </script> {{data}} ☃"  # characters the tiny vocabulary lacks, markup
TEXTS = [*SENTENCES, OOV, ""]  # what the explore page tests' page shows
KINDS = ("encoder", "decoder", "cross")


def optional(name: str):
    """An optional extra's module: missing, the test skips; under CI=true (`.ci/run`), fails."""
    try:
        return importlib.import_module(name)
    except ImportError:
        message = f"{name} is not installed (pip install -e '.[test]')"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message, allow_module_level=True)


def tiny(run_dir: Path, corpus: Path, *overrides: str) -> Config:
    """The tiny preset made smaller still (d_model 32, 400-token batches): the training tests'."""
    return load_config("tiny", [f"run_dir={run_dir}", f"data.corpus={corpus}", *TINY, *overrides])


def make_tiny_run(folder: Path, corpus: Path, *overrides: str) -> Path:
    """A run folder as `mha train` leaves it (config.yaml, tokenizer/, data/, metrics.jsonl,
    checkpoints/best.pt and last.pt), trained by mha's own `train` on the tiny preset (60 updates,
    d_model 64) with a 200-piece vocabulary and one validation, at the end; on one torch thread."""
    cfg = load_config("tiny", [f"run_dir={folder}", f"data.corpus={corpus}", "data.vocab_size=200",
                               "train.eval_every=60", *overrides])
    with one_thread():
        train(cfg)
    return folder


def losses(run_dir: Path) -> dict[int, float]:
    """The training loss of each logged update, by step."""
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}


def write_config(cfg: Config, path: Path) -> Path:
    path.write_text(dump(cfg))
    return path


@contextlib.contextmanager
def one_thread():
    """Two torch threads on a shared 2-core machine spin against each other: 50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def invoke(*args: str | Path, input: str | bytes | None = None):
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def assert_user_error(run: Path, args: list, message: str, input: bytes | None = None) -> None:
    """Exit 2, one 'error:' line holding message on stderr, no traceback, run folder untouched."""
    before = _stamps(run)
    result = invoke(*args, input=input)
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert "Traceback" not in result.output
    assert _stamps(run) == before


def _stamps(run: Path) -> dict[Path, tuple[bytes, int]]:
    return {path: (path.read_bytes(), path.stat().st_mtime_ns)
            for path in run.rglob("*") if path.is_file() and path.parent.name != "data"}


def torchrun(config: Path, out: Path, *args: str) -> subprocess.Popen:
    """Two ddp_worker.py processes under torchrun; each writes rank{r}.json and rank{r}.pt."""
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(WORKER), str(config), str(out), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})


def kill_all(process: subprocess.Popen) -> None:
    """SIGKILL torchrun and its workers (which run in sessions of their own)."""
    def descendants(pid: int) -> list[int]:
        try:
            children = [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
                        for child in (task / "children").read_text().split()]
        except OSError:  # it has exited meanwhile
            return []
        return children + [d for child in children for d in descendants(child)]

    for pid in [*descendants(process.pid), process.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def finish(process: subprocess.Popen, timeout: float = 60) -> str:
    """stderr once torchrun exits; a hang kills torchrun and its workers, and fails."""
    try:
        return process.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        kill_all(process)
        stderr = process.communicate()[1]
        pytest.fail(f"torchrun still running after {timeout} s (a hang): {stderr[-3000:]}")


def completed(config: Path, out: Path, *args: str) -> str:
    process = torchrun(config, out, *args)
    stderr = finish(process)
    assert process.returncode == 0, stderr[-3000:]
    return stderr


def wait_for_step(run: Path, step: int, process: subprocess.Popen, timeout: float = 60) -> None:
    """Until metrics.jsonl shows `step` (a condition, not a timing); a dead process or the
    timeout kills the process and its children, and fails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if (run / "metrics.jsonl").is_file() and len(losses(run)) >= step:
            return
        time.sleep(0.05)
    kill_all(process)
    pytest.fail(f"training never reached step {step}: {process.communicate()[1][-3000:]}")


@dataclasses.dataclass
class Opened:
    page: object  # playwright Page
    requests: list[str]
    errors: list[str]


def state(opened: Opened, expression: str):
    return opened.page.evaluate(f"() => mhaState.{expression}")


def show(opened: Opened, **choices) -> None:
    """Choose sentence, kind, view or merge through the page's own controls."""
    page = opened.page
    for menu in ("sentence", "kind"):
        if menu in choices:
            page.select_option(f"#{menu}", str(choices[menu]))
    if "merge" in choices:
        page.set_checked("#merge", choices["merge"])
    if "view" in choices:
        page.click(f".tab[data-view={choices['view']}]")


ROLE_NAMES = {"encoder": ("previous", "next"), "decoder": ("previous", "bos"),
              "cross": ("diagonal", "eos")}


def heads_report(heads: list[tuple[str, int, int]], step: int, roles: bool = True) -> dict:
    """A RUN/heads.json report as `mha heads` writes it, built by hand over a model's real head
    list (kind, layer, head): every head's BLEU drop differs, from positive to negative, the
    largest first in the list; with `roles`, the role fields too (every other head named)."""
    base_bleu, base_loss, n = 20.0, 3.0, len(heads)
    records = []
    for i, (kind, layer, head) in enumerate(heads):
        drop = round(0.4 * (n // 2 - i) + 0.05, 2)  # 2.45, 2.05, ... for n = 12; distinct
        record = {"kind": kind, "layer": layer, "head": head, "val_loss": base_loss + drop / 10,
                  "val_bleu": base_bleu - drop, "bleu_drop": drop, "loss_rise": drop / 10,
                  "grad_importance": 0.01 * (n - i), "rank": i + 1}
        if roles:
            first, second = ROLE_NAMES[kind]
            share = 0.95 if i % 2 == 0 else 0.6
            record.update(roles={first: share, second: round(1 - share, 2)},
                          entropy=round(0.3 + i / 7, 3), role=first if i % 2 == 0 else None)
        records.append(record)
    curve = [{"kept": n - k, "bleu": base_bleu - 0.2 * k * k} for k in range(n + 1)]
    return {"split": "val", "sentences": 20, "checkpoint": "best", "checkpoint_step": step,
            "baseline": {"val_loss": base_loss, "val_bleu": base_bleu}, "heads": records,
            "pruning": curve, "can_remove": {"0.5": 1, "1.0": 2}, "spearman": 0.5}


def _kl(p: np.ndarray, m: np.ndarray) -> np.ndarray:
    """KL(p || m) in bits per row, 0 log 0 = 0."""
    return (p * np.log2(np.where(p > 0, p / np.where(m > 0, m, 1), 1))).sum(-1)


def numpy_figures(layers: np.ndarray, diagonal: bool) -> dict:
    """The legend's definitions, on (L, H, R, C) weights."""
    logs = np.log2(np.where(layers > 0, layers, 1))
    entropy = -(layers * logs).sum(-1).mean(-1)  # (L, H)
    max_weight = layers.max(-1).mean(-1)
    L, H, R, C = layers.shape
    js = np.full((L, H), np.nan)
    for l_, h in np.ndindex(L, H):
        distances = []
        for g in set(range(H)) - {h}:
            p, q = layers[l_, h], layers[l_, g]  # (R, C) each
            divergence = 0.5 * _kl(p, (p + q) / 2) + 0.5 * _kl(q, (p + q) / 2)  # (R,)
            distances.append(np.sqrt(np.maximum(divergence, 0)).mean())
        js[l_, h] = np.mean(distances) if distances else np.nan
    figures = {"entropy": entropy, "maxWeight": max_weight, "jsDistance": js}
    if diagonal:
        target = np.floor(np.arange(R) * C / R + 0.5)
        figures["diagonal"] = (layers.argmax(-1) == target).mean(-1)
    return figures


@dataclasses.dataclass
class Served:
    """A `mha serve` process on a loopback port; its stderr goes to `log`."""

    process: subprocess.Popen
    url: str
    port: int
    log: Path

    def request(self, method: str, path: str, body: object = None,
                headers: dict | None = None) -> tuple[int, object]:
        """(status, parsed JSON or text). `body`: bytes as they are, anything else as JSON."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        connection.request(method, path, body=data,
                           headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        raw, kind = response.read(), response.getheader("content-type") or ""
        connection.close()
        return response.status, json.loads(raw) if "json" in kind else raw.decode("utf-8")

    def post(self, path: str, body: object) -> tuple[int, object]:
        return self.request("POST", path, body)

    def get(self, path: str) -> tuple[int, object]:
        return self.request("GET", path)


def start_server(run: Path, folder: Path, *args: str) -> Served:
    """`mha serve RUN --port 0`, --no-compile unless args say --compile, one torch thread;
    returns once it prints its address (the model is loaded; requests wait in the backlog)."""
    log = folder / f"serve{len(list(folder.glob('serve*.log')))}.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "mha.cli", "serve", str(run), "--port", "0", "--device", "cpu",
             *args, "--compile" if "--compile" in args else "--no-compile"], text=True,
            stdout=subprocess.PIPE, stderr=stderr, env={**os.environ, "OMP_NUM_THREADS": "1"})
    line = process.stdout.readline()  # "serving RUN at http://127.0.0.1:PORT/ ...", or EOF
    if " at http://" not in line:
        process.kill()
        pytest.fail(f"mha serve did not start: {line}{log.read_text()[-3000:]}")
    url = line.split(" at ")[1].split()[0]
    return Served(process, url, int(url.rsplit(":", 1)[1].rstrip("/")), log)


def stop_server(served: Served, signum: int = signal.SIGTERM, timeout: float = 60) -> int:
    """Signal it and wait for its exit code; a hang kills it and fails."""
    if served.process.poll() is None:
        served.process.send_signal(signum)
    try:
        return served.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        served.process.kill()
        pytest.fail(f"mha serve still running {timeout} s after {signal.Signals(signum).name}")


def wait_until(condition, what: str, timeout: float = 60) -> None:
    """Until condition() holds (a condition, not a timing); the timeout fails the test."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"still waiting after {timeout} s for {what}")
        time.sleep(0.02)
