"""`mha serve` under load, on loopback only, against offline decoding of the same model.

Offline (this process, the run's test split or --src-file): `translate_lines` in batches of
decode.batch_size before the first served phase and after each (a phase is set against the mean
of the runs around it), unsorted batches of the most clients, batch-1 latency. Served: `mha serve
RUN` on 127.0.0.1 and one asyncio client on one thread (this process) whose keep-alive
connections send single sentences (greedy), one at a time: 1, 8 and 32 clients, each phase
bounded by --seconds and --requests, every answer checked against offline's; per phase the
sentences a batch (busy sentences a step, in the running batch) and the model's busy share
(/stats) and the client's CPU share. Last, 32 clients with --bad-share malformed or oversize
requests: 5xx answers, good requests lost, and the server's RSS, its running batch's process
included (median of the last tenth against the first).

    python bench/serve_load.py RUN [--seconds 20] [--requests 5000] [--clients 1,8,32]
                                   [--threads 1] [--bad-share 0.2] [--src-file F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
COUNTERS = ("batches", "sentences", "busy_seconds", "busy_cpu_seconds", "steps", "rows")
# decoding calls, their sentences, the model's seconds in them and its CPU seconds there, and
# the running batch's steps and rows (plain greedy requests decode there)


@dataclass
class Phase:
    clients: int
    sent: int = 0
    good: int = 0  # good requests answered 200 with the offline translation
    lost: int = 0  # good requests without a 200, or with another translation
    bad: int = 0  # malformed or oversize requests sent
    server_errors: int = 0  # 5xx answers
    latencies: list[float] = field(default_factory=list)  # seconds, good requests
    wall: float = 0.0
    cpu: float = 0.0  # this process's CPU seconds during the phase
    rss: list[int] = field(default_factory=list)  # server RSS samples, KiB
    offline: float = 0.0  # offline batched sentences/s, the mean of the runs before and after
    served: dict = field(default_factory=dict)  # the phase's change in /stats' COUNTERS


class Connection:
    """One keep-alive HTTP/1.1 connection; reopened after the server closes it."""

    def __init__(self, port: int) -> None:
        self.port, self.reader, self.writer = port, None, None

    async def post(self, body: bytes, length: int | None = None) -> int:
        """POST /translate; returns the status and keeps the answer in self.answer."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        head = (f"POST /translate HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body) if length is None else length}\r\n\r\n")
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readline()
        headers = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, value = line.decode().split(":", 1)
            headers[name.strip().lower()] = value.strip()
        self.answer = await self.reader.readexactly(int(headers.get("content-length", 0)))
        if headers.get("connection") == "close" or length is not None or not status_line:
            self.close()  # a body we never sent leaves the connection unusable
        return int(status_line.split()[1]) if status_line else 0

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


def bad_request(rng: random.Random, max_chars: int, max_sentences: int,
                max_body: int) -> tuple[bytes, int | None]:
    """One malformed or oversize request: (body, Content-Length to claim or None)."""
    return rng.choice([(b'{"text": ["Ein Hund', None), (b'{"text": [3]}', None),
                       (json.dumps({"text": ["Ein Hund."] * (max_sentences + 1)}).encode(), None),
                       (json.dumps({"text": ["Hund " * (max_chars // 5 + 1)]}).encode(), None),
                       (b"", max_body + 1)])


async def load(port: int, lines: list[str], expected: list[str], phase: Phase, seconds: float,
               requests: int, bad_share: float, limits: dict) -> None:
    deadline = time.monotonic() + seconds
    rng = random.Random(0)
    counter = iter(range(requests))

    async def client() -> None:
        connection = Connection(port)
        for n in counter:
            if time.monotonic() > deadline:
                break
            phase.sent += 1
            if rng.random() < bad_share:
                phase.bad += 1
                status = await connection.post(*bad_request(rng, **limits))
                phase.server_errors += status >= 500
                continue
            i = n % len(lines)
            start = time.perf_counter()
            status = await connection.post(json.dumps({"text": [lines[i]], "beam": 1}).encode())
            phase.server_errors += status >= 500
            ok = status == 200 and json.loads(connection.answer)[
                "translations"][0]["text"] == expected[i]
            phase.good += ok
            phase.lost += not ok
            if ok:
                phase.latencies.append(time.perf_counter() - start)
        connection.close()

    cpu, start = time.process_time(), time.perf_counter()
    await asyncio.gather(*(client() for _ in range(phase.clients)))
    phase.wall, phase.cpu = time.perf_counter() - start, time.process_time() - cpu


def sample_rss(pid: int, phase: Phase, stop: threading.Event) -> None:
    """The server's RSS: its process's and its child's (the running batch's process)."""
    while not stop.wait(0.2):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        phase.rss.append(sum(rss(int(p)) for p in [pid, *children]))


def rss(pid: int) -> int:
    """A process's RSS in KiB (0 if it has just ended)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return 0
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])


class Offline:
    """Offline decoding in this process, measured again around every served phase: the machine's
    speed drifts when others share it, so each phase is set against the offline rate measured
    just before and just after it. Rates by the clock, and by this thread's CPU time, which
    others' load disturbs far less."""

    def __init__(self, run: Path, lines: list[str], compile: bool) -> None:
        from mha.inference import translate
        from mha.inference.run import load_model

        model, tokenizer, cfg = load_model(run, device="cpu")
        self.engine, self.lines, self.batch_size = (translate.MhaEngine(
            model, tokenizer, cfg.decode, compile=compile), lines, cfg.decode.batch_size)
        self.translate = translate
        for size in (8, 1):  # warm-up; compiled: both decoders (inference/fast_decode.py)
            translate.translate_chunk(self.engine, lines[:size], batch_size=size, beam=1)
        self.rates: list[float] = []  # sentences/s, batched, in measuring order
        self.cpu_rates: list[float] = []  # the same per CPU second
        self.latencies: list[float] = []  # seconds, batch 1

    def _timed(self, decode) -> tuple[list[str], float, float]:
        wall, cpu = time.perf_counter(), time.thread_time()
        out = decode()
        n = len(self.lines)
        return out, n / (time.perf_counter() - wall), n / (time.thread_time() - cpu)

    def batched(self) -> list[str]:
        """Translations of every line by `translate_lines`; its rates join the lists."""
        out, rate, cpu_rate = self._timed(lambda: list(self.translate.translate_lines(
            self.engine, self.lines, batch_size=self.batch_size, beam=1)))
        self.rates.append(rate)
        self.cpu_rates.append(cpu_rate)
        return out

    def unsorted(self, size: int) -> tuple[float, float]:
        """Sentences/s (clock, CPU) in batches of `size` taken in input order, not sorted by
        length: the most that `size` clients sending one sentence each can give the server."""
        lines = random.Random(0).sample(self.lines, len(self.lines))
        return self._timed(lambda: [self.translate.translate_chunk(
            self.engine, lines[first:first + size], batch_size=size, beam=1)
            for first in range(0, len(lines), size)])[1:]

    def batch_1(self, count: int) -> None:
        for line in self.lines[:count]:
            start = time.perf_counter()
            self.translate.translate_chunk(self.engine, [line], batch_size=1, beam=1)
            self.latencies.append(time.perf_counter() - start)


def start_server(run: Path, threads: int, extra: list[str]) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "mha.cli", "serve", str(run), "--host", HOST, "--port", "0",
         "--device", "cpu", *extra], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    line = process.stdout.readline()
    if " at http://" not in line:
        sys.exit(f"mha serve did not start: {line}")
    return process, int(line.split(" at ")[1].split()[0].rstrip("/").rsplit(":", 1)[1])


def get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=60) as response:
        return json.loads(response.read())


def batch_size(served: dict) -> float:
    """Sentences a batch: busy rows a step of the running batch, else sentences a call."""
    if served["steps"]:
        return served["rows"] / served["steps"]
    return served["sentences"] / max(1, served["batches"])


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 \
        else (values or [float("nan")])[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--src-file", type=Path)
    parser.add_argument("--seconds", type=float, default=20.0, help="per phase, at most")
    parser.add_argument("--requests", type=int, default=5000, help="per phase, at most")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    parser.add_argument("--bad-share", type=float, default=0.2)
    parser.add_argument("--latency-count", type=int, default=100)
    parser.add_argument("--serve-args", default="", help="more `mha serve` options, quoted")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="eager greedy on both sides (default: compiled, as `mha serve` and "
                             "`mha translate` on 1000+ lines decode)")
    args = parser.parse_args()
    import torch

    from mha.data.prepare import load_prepared
    from mha.inference.provenance import cpu_info

    torch.set_num_threads(args.threads)
    lines = (args.src_file.read_text(encoding="utf-8").splitlines() if args.src_file
             else list(load_prepared(args.run).splits["test"]["src"]))
    offline = Offline(args.run, lines, args.compile)
    expected = offline.batched()
    offline.batch_1(args.latency_count)
    most = max(int(n) for n in args.clients.split(","))
    ceiling = (most, *offline.unsorted(most))
    process, port = start_server(args.run, args.threads, args.serve_args.split()
                                 + ([] if args.compile else ["--no-compile"]))
    try:
        while not get(port, "/health")["warm"]:
            time.sleep(0.1)
        info = get(port, "/info")["limits"]
        phases = [Phase(int(n)) for n in args.clients.split(",")] + [Phase(32)]
        for phase in phases:
            run_phase(phase, process.pid, port, lines, expected, args,
                      args.bad_share if phase is phases[-1] else 0.0, info)
            offline.batched()
            phase.offline = statistics.mean(offline.rates[-2:])
            if phase.clients == 1:
                offline.batch_1(args.latency_count)
    finally:
        process.terminate()
        code = process.wait(timeout=120)
    report(args, cpu_info(), lines, offline, ceiling, phases, code)


def run_phase(phase: Phase, pid: int, port: int, lines: list[str], expected: list[str], args,
              bad_share: float, limits: dict) -> None:
    before = get(port, "/stats")
    stop = threading.Event()
    sampler = threading.Thread(target=sample_rss, args=(pid, phase, stop))
    sampler.start()
    asyncio.run(load(port, lines, expected, phase, args.seconds, args.requests, bad_share,
                     limits))
    stop.set()
    sampler.join()
    after = get(port, "/stats")
    phase.served = {key: after[key] - before[key] for key in COUNTERS}


def report(args, cpu, lines, offline: Offline, ceiling, phases, code) -> None:
    name, flags = cpu
    shown = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags)
    print(f"{name} ({shown}); torch threads {args.threads} (server and offline); "
          f"{os.cpu_count()} cores; {len(lines)} test sentences; run {args.run}; offline "
          f"batched measured {len(offline.rates)} times, before and after each phase: "
          f"{', '.join(f'{r:.0f}' for r in offline.rates)} sentences/s\n")
    print("| case | sentences/s | offline batched around it | x offline batched | p50 ms | "
          "p95 ms | sentences a batch | model thread busy | client CPU share | x offline "
          "batched, per CPU second of the model thread |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rate, latency = statistics.mean(offline.rates), offline.latencies
    cpu_rate = statistics.mean(offline.cpu_rates)
    print(f"| offline, translate_lines, batched | {rate:.1f} | | 1.00 | | | "
          f"{offline.batch_size} | | | 1.00 |")
    print(f"| offline, unsorted batches of {ceiling[0]} (the most {ceiling[0]} clients can give) | "
          f"{ceiling[1]:.1f} | {rate:.1f} | {ceiling[1] / rate:.2f} | | | {ceiling[0]} | | | "
          f"{ceiling[2] / cpu_rate:.2f} |")
    p50, p95 = (1000 * percentile(latency, q) for q in (50, 95))
    print(f"| offline, batch 1 | {1 / statistics.mean(latency):.1f} | {rate:.1f} | "
          f"{1 / statistics.mean(latency) / rate:.2f} | {p50:.1f} | {p95:.1f} | 1 | | | |")
    for phase in phases[:-1]:
        rate, served = phase.good / phase.wall, phase.served
        p50, p95 = (1000 * percentile(phase.latencies, q) for q in (50, 95))
        print(f"| serve, {phase.clients} client{'s' if phase.clients > 1 else ''} | {rate:.1f} | "
              f"{phase.offline:.1f} | {rate / phase.offline:.2f} | {p50:.1f} | {p95:.1f} | "
              f"{batch_size(served):.1f} | "
              f"{served['busy_seconds'] / phase.wall:.0%} | {phase.cpu / phase.wall:.0%} | "
              f"{served['sentences'] / served['busy_cpu_seconds'] / cpu_rate:.2f} |")
    bad = phases[-1]
    tenth = max(1, len(bad.rss) // 10)
    first, last = statistics.median(bad.rss[:tenth]), statistics.median(bad.rss[-tenth:])
    print(f"\nbad input under load (32 clients, {args.bad_share:.0%} bad): {bad.sent} requests "
          f"in {bad.wall:.1f} s, {bad.bad} bad, {bad.server_errors} 5xx, {bad.good} good answered "
          f"right, {bad.lost} good lost; server RSS median {first / 1024:.0f} MiB in the first "
          f"tenth, {last / 1024:.0f} MiB in the last ({last / first - 1:+.1%})")
    print(f"good requests lost over all phases: {sum(p.lost for p in phases)}; server exit "
          f"code after SIGTERM: {code}")

if __name__ == "__main__":
    main()
