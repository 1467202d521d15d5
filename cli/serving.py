"""`mha serve`: a run's translation API and live explore page, on uvicorn (the `serve` extra)."""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import sys
from typing import Annotated

import typer

from mha.cli.app import command, fail
from mha.cli.decoding import CompileOpt
from mha.cli.engines import check_engine, open_engine
from mha.cli.using import CheckpointOpt, DeviceOpt, EngineOpt, RunArg
from mha.inference.batcher import PATIENCE

log = logging.getLogger(__name__)

DRAIN_SECONDS = 60  # after SIGINT/SIGTERM, in-flight requests get this long to finish

WindowOpt = Annotated[float, typer.Option(
    "--batch-window", min=0.0, max=10.0, help="Seconds a batch waits for more requests after its "
    "first sentence (0: it takes what queued while the last batch decoded); the running batch "
    "of greedy requests waits so only when idle.")]
PatienceOpt = Annotated[float, typer.Option(
    "--patience", min=0.0, max=10.0, help="Whole batches (requests other than plain greedy): "
    "once the model is free, how long to wait for the clients the last batch answered to send "
    "again (on the same connection), in units of that "
    "batch's decoding time; clients that did not come back last time are not waited for (0: "
    "take what is queued at once).")]


@command
def serve(
    run_dir: RunArg,
    host: Annotated[str, typer.Option(
        "--host", help="Address to listen on; anything but loopback is reachable by others.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(
        "--port", min=0, max=65535, help="Port; 0 picks a free one (printed).")] = 8000,
    max_sentences: Annotated[int, typer.Option(
        "--max-sentences", min=1, help="Most sentences in one request (more: 413).")] = 64,
    max_chars: Annotated[int, typer.Option(
        "--max-chars", min=1, help="Most characters in one sentence (more: 413).")] = 1000,
    batch_window: WindowOpt = 0.0,
    patience: PatienceOpt = PATIENCE,
    max_batch: Annotated[int | None, typer.Option(
        "--max-batch", min=1, help="Most sentences in one batch, or decoding at once in the "
        "running batch (default: the run's decode.batch_size).", show_default=False)] = None,
    which: CheckpointOpt = "best",
    device: DeviceOpt = "auto",
    engine: EngineOpt = "mha",
    compile: CompileOpt = None,
) -> None:
    """Serve a JSON API (POST /translate, /explore; GET /health, /info, /stats; docs at /docs)
    and the explore page in live mode at /. Plain greedy requests decode in a running batch
    that sentences join and leave as they come and end (continuous batching, in a process of its
    own); other concurrent requests are decoded in shared batches.
    SIGINT or SIGTERM: stop accepting, finish the requests in flight, exit 0. decode.compile
    auto compiles greedy decoding for a server (it decodes lines without end), in the
    background after the model loads: /health says warm once done."""
    check_engine(engine)
    try:
        import uvicorn

        from mha.inference.serve import Limits, create_app
        from mha.inference.service import Service
    except ImportError as error:
        fail(f"mha serve needs {error.name}: pip install 'mha[serve]'")
    with _listen(host, port) as listening:  # a port in use fails before the model loads
        translator, decode = open_engine(run_dir, engine, which, device, compile=compile,
                                         lines=sys.maxsize)
        service = Service(translator, decode, run_dir=run_dir, which=which)
        app = create_app(service, Limits(max_sentences, max_chars), window=batch_window,
                         max_batch=max_batch or decode.batch_size, patience=patience)
        address = listening.getsockname()
        if not ipaddress.ip_address(address[0]).is_loopback:
            log.warning("listening on %s: other machines can reach this server; it has no "
                        "authentication (use --host 127.0.0.1 to keep it local)", host)
        typer.echo(f"serving {run_dir} at http://{_url_host(address[0])}:{address[1]}/ "
                   f"(API docs at /docs); Ctrl-C stops it")
        _run(uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False,
                                           timeout_graceful_shutdown=DRAIN_SECONDS)), listening)


def _run(server, listening: socket.socket) -> None:
    """uvicorn drains on SIGINT/SIGTERM, then raises the signal again with the handler it found:
    this one, which lets the command end (exit 0) instead of killing the process."""
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, _stopped)
    server.run(sockets=[listening])


def _listen(host: str, port: int) -> socket.socket:
    """A bound socket for uvicorn; an address that cannot be had is one error line."""
    try:
        family, *_, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        listening = socket.socket(family, socket.SOCK_STREAM)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # accepted connections inherit it: without it, a response written in two parts waits
        # for the client's delayed ACK, 40 ms a request (measured: 44 ms a /health on loopback;
        # uvicorn sets it only on sockets it binds itself)
        listening.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        listening.bind(address)
        listening.listen(2048)  # from here on, a connection waits until the server accepts it
    except OSError as error:
        fail(f"cannot listen on {host}:{port}: {error.strerror or error}")
    return listening


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _stopped(signum: int, frame) -> None:
    log.info("%s: stopped after the requests in flight", signal.Signals(signum).name)
