"""`mha serve`'s HTTP API (FastAPI): translate, explore, the live page, health, the run's metadata.

    POST /translate  {"text": [...], "beam"?, "nbest"?, "prefix"?, "token_scores"?, "alignments"?,
                     "align_layer"?, "shift_att"?, "sample"?, "top_k"?, "top_p"?, "temperature"?,
                     "seed"?} -> {"translations": [what `mha translate --json` prints per
                     sentence with those options: text, score, log_prob, ...], "beam", "warnings"}
    POST /explore    {"text": "...", "beam": N?} -> the explore page's JSON for that sentence
    GET  /           the explore page in live mode          GET /health  ready, warm
    GET  /info       the run: config, step, checkpoint, tokenizer sizes, limits
    GET  /stats      batching counters (inference/batcher.py)   GET /docs  OpenAPI

Every error is JSON with an "error" line: 413 for a request over a limit (it names the limit:
max_sentences, max_chars, max_body), 422 for malformed JSON or fields, 404/405 for a wrong
path or method, 501 for /explore on an engine without attention, 500 (logged, no traceback
sent) for a bug. The model runs on the batcher's one worker thread; the handlers only wait.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from mha.inference.batcher import PATIENCE, Batcher
from mha.inference.serve_requests import ExploreRequest, TranslateRequest
from mha.inference.service import OptionError, Service
from mha.inference.streaming import Stream
from mha.inference.translate import unknown_message

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    max_sentences: int = 64  # sentences in one /translate request
    max_chars: int = 1000  # characters in one sentence

    @property
    def max_body(self) -> int:
        """Bytes of a request body: every sentence at its longest, each character escaped as
        JSON's longest form (a surrogate pair, 12 bytes), and room for the rest."""
        return self.max_sentences * (self.max_chars * 12 + 8) + 4096


class LimitError(HTTPException):
    """A request over a limit: 413, with the limit's name and value. An HTTPException, so that
    FastAPI passes it on when it comes from reading the body (BodyLimit)."""

    def __init__(self, limit: str, maximum: int, message: str) -> None:
        super().__init__(413, message)
        self.limit, self.maximum = limit, maximum


def create_app(service: Service, limits: Limits, *, window: float, max_batch: int,
               patience: float = PATIENCE) -> FastAPI:
    """The app; the batcher starts with it and, after the last request, stops with it."""
    batcher = Batcher(service.translate, window=window, max_batch=max_batch, patience=patience)
    stream = service.stream(batcher, window=window, max_rows=max_batch)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        if stream is not None:
            stream.start()
        warm_up = asyncio.ensure_future(batcher.run(service.warm_up))  # in the background
        yield
        await warm_up
        if stream is not None:
            await stream.close()
        await batcher.close()

    app = FastAPI(title="mha serve", lifespan=lifespan,
                  description="Translate with an mha run and see its attention.")
    app.add_middleware(BodyLimit, limit=limits.max_body)
    _add_error_handlers(app)
    _add_model_routes(app, service, batcher, stream, limits)
    info = service.info(asdict(limits) | {"max_body": limits.max_body},
                        {"window": window, "max_batch": max_batch, "patience": patience})
    _add_run_routes(app, service, batcher, stream, info)
    return app


def _add_model_routes(app: FastAPI, service: Service, batcher: Batcher, stream: Stream | None,
                      limits: Limits) -> None:
    @app.post("/translate")
    async def translate(request: TranslateRequest, http: Request) -> JSONResponse:
        """Translate sentences; per sentence, what `mha translate --json` prints with the same
        options. Plain greedy requests join the running batch (continuous batching); other
        concurrent requests with equal options are decoded in shared batches; one that samples
        is decoded alone."""
        check_limits(request.text, limits)
        decoding, items = service.options(request), service.items(request)
        if stream is not None and stream.usable and service.streams(decoding, items):
            answers = await stream.translate([source for source, _ in items])
        elif decoding.search.sampling is None:
            answers = await batcher.translate(decoding, items, http.client)
        else:
            answers = await batcher.run(service.sample, decoding, items)
        unknown = service.tokenizer.unknown_characters(request.text)
        return JSONResponse({"translations": answers, "beam": decoding.search.beam,
                             "warnings": [unknown_message(unknown, "the request")] if unknown
                             else []})

    @app.post("/explore")
    async def explore(request: ExploreRequest) -> Response:
        """The explore page's JSON for one sentence, as `mha explore` embeds it."""
        if not service.explorable:
            raise HTTPException(501, "/explore needs mha's own decoder (serve with --engine mha)")
        check_limits([request.text], limits)
        body = await batcher.run(service.explore, request.beam, request.text)
        return Response(body, media_type="application/json")


def _add_run_routes(app: FastAPI, service: Service, batcher: Batcher, stream: Stream | None,
                    info: dict) -> None:
    page = service.page() if service.explorable else None

    @app.get("/", response_class=HTMLResponse)
    async def live_page() -> str:
        """The explore page in live mode: type a sentence, see every attention weight."""
        if page is None:
            raise HTTPException(501, "the live page needs mha's own decoder (--engine mha)")
        return page

    @app.get("/health")
    async def health() -> dict:
        """Ready once the model is loaded (before the server listens); warm after the first
        translation, made in the background, and once the running batch's process has loaded
        and compiled its model (greedy requests decode in whole batches until then)."""
        return {"status": "ready", "warm": service.warm and (stream is None or stream.ready
                                                             or stream.broken)}

    @app.get("/info")
    async def run_info() -> dict:
        """The run: engine, checkpoint, step, config, tokenizer sizes, limits, batching."""
        return info

    @app.get("/stats")
    async def stats() -> dict:
        """Batching counters: requests, sentences, batches, largest_batch, calls (other
        work on the model's thread), queued and pending (sentences not yet answered); the running
        batch's steps, rows and joined, and its process's state and pid."""
        return batcher.report() | (stream.report() if stream is not None else {})


def check_limits(texts: list[str], limits: Limits) -> None:
    """LimitError (413) for too many sentences or a sentence too long, naming the limit."""
    if len(texts) > limits.max_sentences:
        raise LimitError("max_sentences", limits.max_sentences,
                         f"{len(texts)} sentences in one request, more than max_sentences "
                         f"({limits.max_sentences}): send them in several requests")
    longest = max(range(len(texts)), key=lambda i: len(texts[i]))
    if len(texts[longest]) > limits.max_chars:
        raise LimitError("max_chars", limits.max_chars,
                         f"sentence {longest + 1} has {len(texts[longest])} characters, more "
                         f"than max_chars ({limits.max_chars})")


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LimitError)
    async def over_limit(request: Request, error: LimitError) -> JSONResponse:
        return JSONResponse({"error": error.detail, "limit": error.limit, "max": error.maximum},
                            status_code=413)

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [_problem(e) for e in error.errors()]  # not the input: it may be large
        summary = "; ".join(f"{p['where']}: {p['problem']}" for p in problems[:5])
        return JSONResponse({"error": f"malformed request: {summary}", "problems": problems},
                            status_code=422)

    @app.exception_handler(OptionError)
    async def unusable_option(request: Request, error: OptionError) -> JSONResponse:
        problem = {"where": f"body.{error.field}", "problem": error.problem}
        return JSONResponse({"error": f"malformed request: {problem['where']}: {error.problem}",
                             "problems": [problem]}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 400 and isinstance(error.__cause__, ValueError):
            return JSONResponse({"error": "malformed request: body: not JSON in UTF-8 "
                                          f"({error.__cause__})"}, status_code=422)
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code,
                            headers=error.headers)

    @app.exception_handler(Exception)
    async def bug(request: Request, error: Exception) -> JSONResponse:
        log.error("%s %s failed: %r", request.method, request.url.path, error)
        return JSONResponse({"error": f"internal error ({type(error).__name__}); the server log "
                                      "has the details"}, status_code=500)


def _problem(error: dict) -> dict:
    if error["type"] == "json_invalid":  # loc is ("body", position)
        return {"where": "body", "problem": f"invalid JSON at character {error['loc'][1]}: "
                                            f"{error['ctx']['error']}"}
    return {"where": ".".join(map(str, error["loc"])), "problem": error["msg"]}


class BodyLimit:
    """ASGI middleware: a body over `limit` bytes is refused (413, limit max_body) before it is
    read whole, by its Content-Length or, without one, as its chunks arrive."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.limit:
            error = {"error": self._message(int(length)), "limit": "max_body", "max": self.limit}
            return await JSONResponse(error, status_code=413)(scope, receive, send)
        received = 0

        async def counted() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise LimitError("max_body", self.limit, self._message(received))
            return message

        await self.app(scope, counted, send)

    def _message(self, length: int) -> str:
        return (f"a body of {length} bytes, more than max_body ({self.limit} bytes, from "
                "max_sentences and max_chars)")
