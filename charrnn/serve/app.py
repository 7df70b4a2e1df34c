"""The HTTP layer of `charrnn serve`: validate, hand the request to a model's engine, stream.

    GET  /               the playground (static files in static/, served without a key)
    POST /v1/generate    generate text; JSON back, or server-sent events while it is written
    GET  /v1/models      the models served, and the server's limits
    GET  /healthz        200 while every model can generate, else 503
    GET  /docs           the API's OpenAPI documentation (/openapi.json: the schema)

Everything about generating lives in engine.py, and writing the answers (JSON, server-sent
events) in answers.py; this module routes requests and turns their JSON into
`GenerationParams` (every bad field a 4xx JSON error naming it).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from charrnn import __version__
from charrnn.errors import Overloaded, ShuttingDown, UsageError
from charrnn.safeload import load_json
from charrnn.sample import MAX_SEED, SampleSettings
from charrnn.serve.answers import answer_json, events, outcome_unless_gone
from charrnn.serve.engine import GenerationParams
from charrnn.serve.models import ServedModel

STATIC = Path(__file__).parent / "static"
MAX_BODY_BYTES = 1 << 20  # a request is a few options and a prime: 1 MB is plenty
# The request line and headers (server.py bounds them): the API's own take a few hundred
# bytes, browsers send a few KiB of cookies at most.
MAX_HEAD_BYTES = 64 * 1024
# A request's head, and then its body, must arrive within this long: a client sending a byte
# now and then would otherwise hold its connection (and a task) for ever.
HEAD_SECONDS = BODY_SECONDS = 30.0
# A client that reads nothing of its answer this long is cut off (server.py).
WRITE_STALL_SECONDS = 60.0
MAX_PRIME_CHARS = 10_000  # a longer one waits long to start (read in pieces between steps)
MAX_BEAM = 32  # beams cost beam x length steps on one worker; more rarely helps
DEFAULT_LENGTH = 500  # as `charrnn sample`
SEED_RANGE = (0, MAX_SEED)  # as `charrnn sample --seed`
MAX_UNKNOWN_SHOWN = 5  # unknown fields named in an error; the rest are counted
# The pages load only their own files, and no other site may frame them (and trick a user's
# clicks on them).
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; "
                                           "base-uri 'none'; form-action 'self'",
                "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer"}


class _PageFiles(StaticFiles):
    """The playground's files, each with PAGE_HEADERS: the page is also /static/index.html,
    and no other site may frame it there either."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(PAGE_HEADERS)
        return response


class GenerateRequest(BaseModel):
    """POST /v1/generate: the same options, meanings and limits as `charrnn sample`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prime: str = Field("", description="Text to start from; the model reads it, then continues "
                       f"it. At most {MAX_PRIME_CHARS:,} characters, all in the model's "
                       "vocabulary.")
    length: int | None = Field(None, ge=0, description=f"Characters to generate per sample, "
                               f"prime not counted (default {DEFAULT_LENGTH}, at most the "
                               "server's --max-length).")
    temperature: float = Field(1.0, ge=0, allow_inf_nan=False, description=">0 scales the "
                               "scores (low: safe, high: wild); 0 is greedy.")
    top_k: int | None = Field(None, ge=1, description="Draw only among the k most likely "
                              "characters.")
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False, description="Draw only "
                                "among the most likely characters whose probabilities add up "
                                "to p (nucleus sampling).")
    stop: str | None = Field(None, min_length=1, description="End each sample at the first "
                             "occurrence of this text after the prime (kept).")
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1], description="Same seed, "
                             "same text (what `charrnn sample --seed` prints), whoever else "
                             "the server is serving.")
    num_samples: int = Field(1, ge=1, description="Samples drawn together (at most the "
                             "server's --max-streams).")
    model: str | None = Field(None, description="Which served model (GET /v1/models); "
                              "default: the first one.")
    beam: int | None = Field(None, ge=1, le=MAX_BEAM, description="Beam search with this many "
                             "beams: the most probable continuation(s), deterministic; no "
                             "temperature, top_k or top_p.")
    logprobs: bool = Field(False, description="Also return each generated character's "
                           "natural-log probability (nats).")
    stream: bool = Field(False, description="Send server-sent events as the text is written "
                         "(when this field is not sent: chosen by `Accept: "
                         "text/event-stream`).")


class GeneratedSample(BaseModel):
    text: str
    logprobs: list[float] | None = None
    finish_reason: str = Field(description="length, stop, or shutdown (the server stopped)")


class Usage(BaseModel):
    prime_chars: int
    generated_chars: int


class GenerateResponse(BaseModel):
    model: str
    samples: list[GeneratedSample]
    usage: Usage


class Problem(BaseModel):
    field: str | None
    message: str


class ErrorDetail(BaseModel):
    type: str
    message: str
    field: str | None = None
    problems: list[Problem] = []


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ApiError(Exception):
    """A request the API refuses: its status, one line, and the fields at fault."""

    def __init__(self, status: int, kind: str, problems: list[tuple[str | None, str]],
                 headers: dict[str, str] | None = None):
        super().__init__("; ".join(message for _, message in problems))
        self.status, self.kind, self.problems, self.headers = status, kind, problems, headers

    def response(self) -> JSONResponse:
        return error_response(self.status, self.kind, self.problems, self.headers)


def error_response(status: int, kind: str, problems: list[tuple[str | None, str]],
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(kind, problems), status_code=status, headers=headers)


def error_body(kind: str, problems: list[tuple[str | None, str]]) -> dict:
    """The API's JSON error: its type, one line, and the fields at fault."""
    # Messages quote what the client sent: a lone surrogate (JSON's "\ud800") cannot be
    # written as UTF-8, so it is shown escaped.
    problems = [(None if f is None else _writable(f), _writable(m)) for f, m in problems]
    return {"error": {"type": kind, "message": "; ".join(m for _, m in problems),
                      "field": problems[0][0] if problems else None,
                      "problems": [{"field": f, "message": m} for f, m in problems]}}


def _keep_exact_bounds(app: FastAPI) -> None:
    """/openapi.json with the seed's bound as the integer it is: FastAPI's OpenAPI model keeps
    bounds as floats, and 2**64 - 1 became 1.8446744073709552e+19 (another number)."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            pending = [build()]
            while pending:
                node = pending.pop()
                if isinstance(node, dict):
                    for key in ("minimum", "maximum"):
                        if node.get(key) == float(MAX_SEED):
                            node[key] = MAX_SEED
                    pending.extend(node.values())
                elif isinstance(node, list):
                    pending.extend(node)
        return app.openapi_schema

    app.openapi = openapi


def _writable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _cut(shown: str, limit: int = 40) -> str:
    """A client's value, as quoted in a message, at most `limit` characters."""
    return shown if len(shown) <= limit else shown[:limit - 3] + "..."


def create_app(models: dict[str, ServedModel], *, api_key: str | None = None) -> FastAPI:
    """The ASGI app serving these models (the first is the default)."""
    if not models:
        raise ValueError("no models to serve")
    # /docs is our own page reading /openapi.json: FastAPI's Swagger UI loads from a CDN, and
    # the server must work where no CDN can be reached.
    app = FastAPI(title="charrnn", version=__version__, summary="Character-level language "
                  "models: generate text, streamed as it is written.", docs_url=None,
                  redoc_url=None)
    app.state.models = models
    _keep_exact_bounds(app)
    # An asyncio.Event that the server (server.py) sets when a signal asks it to stop; made by
    # the server, on whose event loop it is waited for (an Event belongs to one loop).
    app.state.stopping = None
    default = next(iter(models))
    any_engine = models[default].engine

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        where = f"{request.method} {request.url.path}"
        return error_response(exc.status_code, kind, [(None, f"{exc.detail}: {where}")],
                              getattr(exc, "headers", None))

    @app.get("/", include_in_schema=False)
    async def _playground() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", _PageFiles(directory=STATIC), name="static")

    @app.get("/docs", include_in_schema=False)
    async def _docs() -> FileResponse:
        return FileResponse(STATIC / "docs.html", headers=PAGE_HEADERS)

    @app.get("/healthz", summary="Whether every model can generate")
    async def healthz() -> JSONResponse:
        states = {name: {"healthy": m.engine.healthy, **m.engine.load()}
                  for name, m in models.items()}
        healthy = all(s["healthy"] for s in states.values())
        return JSONResponse({"status": "ok" if healthy else "unavailable", "models": states},
                            status_code=200 if healthy else 503)

    @app.get("/v1/models", summary="The models served and the server's limits")
    async def list_models() -> dict:
        return {"models": [{**m.info, "default": name == default} for name, m in models.items()],
                "limits": {"max_length": any_engine.max_length,
                           "max_streams": any_engine.max_streams,
                           "max_queue": any_engine.max_queue,
                           "max_prime_chars": MAX_PRIME_CHARS, "max_beam": MAX_BEAM,
                           "max_body_bytes": MAX_BODY_BYTES,
                           "max_head_bytes": MAX_HEAD_BYTES}}

    # HEAD (what some health checks and link checkers send) answers as GET, without the body.
    for path, endpoint in (("/", _playground), ("/docs", _docs), ("/healthz", healthz),
                           ("/v1/models", list_models)):
        app.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False)

    @app.post("/v1/generate", summary="Generate text",
              response_model=GenerateResponse,
              responses={200: {"content": {"text/event-stream": {"schema": {
                  "type": "string", "description": "With stream: `event: delta` events "
                  "carrying {samples: [{index, text, logprobs?}]}, then `event: done` "
                  "carrying the same JSON as the non-streamed answer."}}}},
                  400: {"model": ErrorResponse}, 401: {"model": ErrorResponse},
                  413: {"model": ErrorResponse}, 422: {"model": ErrorResponse},
                  503: {"model": ErrorResponse}},
              openapi_extra={"requestBody": {"required": False, "content": {
                  "application/json": {"schema": GenerateRequest.model_json_schema()}}}})
    async def generate(request: Request) -> Response:
        asked, problems = parse_request(await read_json(request))
        served, params, prime = resolve(asked, models, default, problems)
        try:
            # The client's address (behind a proxy on this machine, the one it forwards):
            # queued requests take turns by it.
            client = request.client.host if request.client is not None else None
            stream = served.engine.add_request(uuid.uuid4().hex, prime, params, client)
        except Overloaded as exc:
            raise ApiError(503, "overloaded", [(None, str(exc))],
                           {"Retry-After": str(exc.retry_after)}) from None
        except ShuttingDown as exc:
            raise ApiError(503, "shutting_down", [(None, str(exc))]) from None
        except UsageError as exc:  # a check this layer missed: still the caller's mistake
            raise ApiError(422, "invalid_request", [(None, str(exc))]) from None
        # `stream` when sent, else what the client accepts (an explicit false is respected).
        wants_events = "text/event-stream" in request.headers.get("accept", "")
        if asked.stream if "stream" in asked.model_fields_set else wants_events:
            return StreamingResponse(
                events(served, stream, params.logprobs), media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        outcome = await outcome_unless_gone(request, served, stream)
        if outcome is None:  # the client left; nobody reads this
            return Response(status_code=499)
        if outcome.error is not None:
            return error_response(500, "model_error", [(None, outcome.error)])
        body = await answer_json(served.name, outcome, params.logprobs)
        return Response(body.encode(), media_type="application/json")

    if api_key:
        app.add_middleware(BearerKey, key=api_key)
    return app


# ---- reading and checking a request ------------------------------------------------------------
async def read_json(request: Request) -> Any:
    """The body as JSON, at most MAX_BODY_BYTES; an empty body means every default."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large(int(declared))
    chunks: list[bytes] = []

    async def read() -> None:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _too_large(size)
            chunks.append(chunk)

    # Read until the body is in, the clock runs out or the server is asked to stop (which
    # would otherwise wait its whole grace period for a body that is slow to come).
    reading = asyncio.ensure_future(read())
    signal = request.app.state.stopping
    stopping = asyncio.ensure_future(signal.wait() if signal is not None else asyncio.Future())
    try:
        await asyncio.wait({reading, stopping}, timeout=BODY_SECONDS,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        reading.cancel()
    if reading.done() and not reading.cancelled():
        try:
            reading.result()  # an ApiError (too large) is the caller's
        except ClientDisconnect:
            raise ApiError(400, "incomplete_body", [("body", "body: the connection closed "
                                                             "before the whole body arrived")],
                           {"Connection": "close"}) from None
    elif stopping.done() and not stopping.cancelled():
        raise ApiError(503, "shutting_down", [(None, "the server is stopping; send the "
                                                     "request again once it is back")],
                       {"Connection": "close"})
    else:
        received = sum(map(len, chunks))
        raise ApiError(408, "request_timeout", [("body", f"body: {received:,} bytes arrived in "
                                                         f"{BODY_SECONDS:g} s, not the whole "
                                                         "body; send it at once")],
                       {"Connection": "close"})
    body = b"".join(chunks)
    if not body.strip():
        return {}
    try:
        return load_json(body)  # nesting beyond the parser's recursion: a ValueError too
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError among them
        raise ApiError(400, "invalid_json", [("body", f"body: not valid JSON ({exc}); send a "
                                                      'JSON object such as {"prime": "ROMEO:", '
                                                      '"length": 200}')]) from None


def _too_large(size: int) -> ApiError:
    # The connection closes: the rest of the body would only be thrown away as it arrives.
    return ApiError(413, "body_too_large", [("body", f"body: {size:,} bytes or more; at most "
                                                     f"{MAX_BODY_BYTES:,} are read")],
                    {"Connection": "close"})


ALLOWED = {
    "prime": f"a string of at most {MAX_PRIME_CHARS:,} characters",
    "length": "an integer >= 0, at most the server's max_length (GET /v1/models)",
    "temperature": "a number >= 0 (0 means greedy)",
    "top_k": "an integer >= 1, at most the model's vocabulary size, or null",
    "top_p": "a number in (0, 1], or null",
    "stop": "a non-empty string, or null",
    "seed": f"an integer from {SEED_RANGE[0]} to {SEED_RANGE[1]}, or null",
    "num_samples": "an integer >= 1, at most the server's max_streams",
    "model": "a model's name from GET /v1/models, or null",
    "beam": f"an integer from 1 to {MAX_BEAM}, or null",
    "logprobs": "true or false",
    "stream": "true or false",
}


def parse_request(data: Any) -> tuple[GenerateRequest, list[tuple[str, str]]]:
    """The request, and the problems with its types and ranges, each naming its field and what
    is allowed. Fields with a problem are left at their defaults, so that `resolve` can still
    check the others against the model: every problem is reported at once."""
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_request", [("body", f"body: a JSON object is expected, not "
                                                         f"{type(data).__name__}; e.g. "
                                                         '{"prime": "ROMEO:"}')])
    fields = GenerateRequest.model_fields
    # Unknown fields are reported here, a few by name: a body of 100,000 of them would
    # otherwise cost as many problems (and a reply many times the body's size).
    unknown = [key for key in data if key not in fields]
    problems = [(key[:40], f"{_cut(repr(key))}: unknown field; the fields are {', '.join(fields)}")
                for key in unknown[:MAX_UNKNOWN_SHOWN]]
    if len(unknown) > MAX_UNKNOWN_SHOWN:
        problems.append(("body", f"body: {len(unknown) - MAX_UNKNOWN_SHOWN:,} more unknown "
                                 "fields"))
    data = {key: value for key, value in data.items() if key in fields}
    try:
        return GenerateRequest.model_validate(data), problems
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            name = ".".join(str(part) for part in error["loc"]) or "body"
            shown = _cut(json.dumps(error.get("input"), ensure_ascii=False, default=str))
            allowed = ALLOWED.get(error["loc"][0] if error["loc"] else "", "")
            problems.append((name, f"{name}: {error['msg'][0].lower()}{error['msg'][1:]}, not "
                                   f"{shown}" + (f"; allowed: {allowed}" if allowed else "")))
        wrong = {str(error["loc"][0]) for error in exc.errors() if error["loc"]}
        valid = {k: v for k, v in data.items() if k in GenerateRequest.model_fields
                 and k not in wrong}
        return GenerateRequest.model_construct(**valid), problems


def resolve(asked: GenerateRequest, models: dict[str, ServedModel], default: str,
            problems: list[tuple[str, str]]) -> tuple[ServedModel, GenerationParams, str]:
    """The model and settings a request means, checked against that model's limits; raises
    ApiError with these problems and any found here."""
    name = asked.model if asked.model is not None else default
    if name not in models or any(field == "model" for field, _ in problems):
        if name not in models:
            problems.append(("model", f"model: no model named {_cut(repr(name))}; served: "
                                      f"{', '.join(models)}"))
        raise ApiError(422, "invalid_field", problems)
    served = models[name]
    engine, vocab = served.engine, served.engine.vocab
    length = asked.length if asked.length is not None else min(DEFAULT_LENGTH, engine.max_length)
    if length > engine.max_length:
        problems.append(("length", f"length: at most {engine.max_length:,} (the server's "
                                   f"--max-length), not {length:,}"))
    if len(asked.prime) > MAX_PRIME_CHARS:
        problems.append(("prime", f"prime: at most {MAX_PRIME_CHARS:,} characters, not "
                                  f"{len(asked.prime):,}; send the text's last part"))
    else:
        _check(problems, "prime", lambda: engine.sampler.encode_prime(asked.prime))
    if asked.stop is not None:
        _check(problems, "stop", lambda: engine.sampler.prepare_stop(asked.stop))
    choices = vocab.size - 1  # <unk> is never drawn
    if asked.top_k is not None and asked.top_k > choices:
        problems.append(("top_k", f"top_k: at most {choices} (the characters of model "
                                  f"{name}), not {asked.top_k}"))
    if asked.beam is None and asked.num_samples > engine.max_streams:
        problems.append(("num_samples", f"num_samples: at most {engine.max_streams} (the "
                                        f"server's --max-streams), not {asked.num_samples}"))
    if asked.beam is not None:
        drawing = sorted({"temperature", "top_k", "top_p"} & asked.model_fields_set)
        if drawing:
            problems.append(("beam", f"beam: finds the most probable text under the model's "
                                     f"own probabilities; leave out {', '.join(drawing)}"))
        if asked.num_samples > asked.beam:
            problems.append(("num_samples", f"num_samples: at most beam ({asked.beam}) "
                                            f"continuations, not {asked.num_samples}"))
    if problems:
        raise ApiError(422, "invalid_field", problems)
    settings = SampleSettings(length=length, temperature=asked.temperature, top_k=asked.top_k,
                              top_p=asked.top_p, num_samples=asked.num_samples, seed=asked.seed,
                              beam=asked.beam)
    return served, GenerationParams(settings, asked.stop, asked.logprobs), asked.prime


def _check(problems: list[tuple[str, str]], field: str, check) -> None:
    try:
        check()
    except UsageError as exc:
        problems.append((field, f"{field}: {exc}"))


# ---- the API key --------------------------------------------------------------------------------
class BearerKey:
    """Every request but the playground's files and the API's documentation needs
    `Authorization: Bearer KEY`."""

    OPEN = ("/", "/favicon.ico", "/docs", "/openapi.json")  # the page and what documents it

    def __init__(self, app, key: str):
        self.app = app
        self.expected = key.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and not self._open(scope["path"]):
            given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            scheme, _, token = given.partition(b" ")  # the scheme's case does not matter
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(),
                                                                       self.expected):
                problem = ("authorization: a valid API key is required: send the header "
                           "'Authorization: Bearer KEY'" if given else
                           "authorization: missing; send the header 'Authorization: Bearer KEY'")
                response = error_response(401, "unauthorized", [("authorization", problem)],
                                          {"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _open(self, path: str) -> bool:
        return path in self.OPEN or path.startswith("/static/")
