"""The HTTP side of ``gptcli serve``: OpenAI's wire format over FastAPI.

Routes: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions``, ``POST
/v1/classify`` (a gptcli extension, for classify runs), ``GET /health`` and ``GET /`` (the chat
page). Every request body is read and checked here by hand, so that each bad field is one
OpenAI error object naming it (``{"error": {"message", "type", "param", "code"}}``) with the
status that fits: 400, 401, 404, 413, 429 or 503; nothing a client sends reaches a traceback, and
nothing in a request names a file on the server. Generation happens on the engine's thread
(``gptcli.serve.engine``); this module only waits for its events.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gptcli.chat_template import ChatError, ChatFormat, check_messages, cut_at_stops, trim_messages
from gptcli.config import SEED_MAX, SEED_MIN
from gptcli.serve.engine import Engine, QueueFull, ShuttingDown
from gptcli.serve.engine import Request as GenRequest
from gptcli.settings.sample import DEFAULT_MAX_NEW_TOKENS, INSTRUCT_MAX_NEW_TOKENS, MIN_TEMPERATURE
from gptcli.tokenizer import EOT_ID, decode, encode

MAX_BODY_BYTES = 1 << 20  # 1 MiB: far more than any prompt a context of 1024 tokens can hold
MAX_LOGPROBS = 20  # OpenAI's own bound on alternatives per token
MAX_STOPS = 4  # OpenAI's bound on stop texts
MAX_CLASSIFY_INPUTS = 256
CHAT_MAX_TOKENS = INSTRUCT_MAX_NEW_TOKENS  # the book's chapter 7 answers with 256 tokens


class ApiError(Exception):
    """A refused request: its status and OpenAI's error fields."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error"}
    TYPES |= {413: "invalid_request_error", 429: "rate_limit_error", 500: "server_error", 503: "server_error"}

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        kind = self.TYPES.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


@dataclass
class ServedModel:
    """What the server serves: a text model behind an ``Engine``, or a classifier."""

    name: str
    kind: str  # "lm", "instruct" or "classify", as gptcli's run kinds
    context_length: int
    engine: Engine | None = None  # text models
    chat: ChatFormat | None = None  # text models
    classify: Callable[[list[str]], list[list[float]]] | None = None  # classifiers: probabilities per text
    labels: list[str] = field(default_factory=list)
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def instruction_tuned(self) -> bool:
        return self.chat is not None and self.chat.instruct

    def card(self) -> dict[str, Any]:
        card = {"id": self.name, "object": "model", "created": self.created, "owned_by": "gptcli"}
        card |= {"context_length": self.context_length, "kind": self.kind, "instruction_tuned": self.instruction_tuned}
        if self.kind == "classify":
            card["labels"] = self.labels
        return card


# ---------------------------------------------------------------------------------------------
# Checking fields


def _field(body: dict, name: str, kinds: tuple[type, ...], what: str, default: Any = None) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise ApiError(400, f"{name} must be {what}, got {json.dumps(value)[:80]}", param=name)
    return value


def _int(body: dict, name: str, lo: int, hi: int, default: int | None = None) -> int | None:
    value = _field(body, name, (int,), "an integer", default)
    if value is not None and not lo <= value <= hi:
        raise ApiError(400, f"{name} must be from {lo} to {hi}, got {value}", param=name)
    return value


def _number(body: dict, name: str, default: float | None = None) -> float | None:
    value = _field(body, name, (int, float), "a number", default)
    if value is not None and not math.isfinite(value):
        raise ApiError(400, f"{name} must be a finite number, got {value}", param=name)
    return None if value is None else float(value)


@dataclass
class Sampling:
    temperature: float
    top_k: int | None
    top_p: float | None
    n: int
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    max_tokens: int | None


def _sampling(body: dict, *, max_n: int) -> Sampling:
    temperature = _number(body, "temperature", 0.0)
    if temperature < 0 or 0 < temperature < MIN_TEMPERATURE:
        raise ApiError(
            400,
            f"temperature must be 0 (greedy) or from {MIN_TEMPERATURE:g} up, got {temperature}",
            param="temperature",
        )
    top_p = _number(body, "top_p")
    if top_p is not None and not 0 < top_p <= 1:
        raise ApiError(400, f"top_p must be in (0, 1], got {top_p}", param="top_p")
    top_k = _int(body, "top_k", 1, 1 << 30)
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (
        not isinstance(stop, list) or len(stop) > MAX_STOPS or not all(isinstance(s, str) and s for s in stop)
    ):
        raise ApiError(400, f"stop must be a non-empty string or a list of up to {MAX_STOPS} of them", param="stop")
    return Sampling(
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        n=_int(body, "n", 1, max_n, 1),
        seed=_int(body, "seed", SEED_MIN, SEED_MAX),
        stop=tuple(stop or ()),
        stream=_field(body, "stream", (bool,), "true or false", False),
        max_tokens=_field(body, "max_tokens", (int,), "an integer")
        if body.get("max_tokens") is not None
        else _field(body, "max_completion_tokens", (int,), "an integer"),
    )


def _max_tokens(s: Sampling, n_prompt: int, ctx: int, default: int, *, param: str) -> int:
    """The tokens to generate: ``max_tokens`` when the prompt and it fit the context, else a 400;
    when not given, ``default`` or the room left, whichever is less."""
    room = ctx - n_prompt
    if room < 1:
        raise ApiError(
            400,
            f"the prompt is {n_prompt} tokens; the model's context is {ctx} tokens, and at least one must be left "
            "for the answer",
            param=param,
            code="context_length_exceeded",
        )
    if s.max_tokens is None:
        return min(default, room)
    if s.max_tokens < 1:
        raise ApiError(400, f"max_tokens must be at least 1, got {s.max_tokens}", param="max_tokens")
    if s.max_tokens > room:
        raise ApiError(
            400,
            f"max_tokens {s.max_tokens} is too many: the prompt's {n_prompt} tokens and max_tokens must fit the "
            f"context of {ctx} tokens (at most {room} here)",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return s.max_tokens


# ---------------------------------------------------------------------------------------------
# Running requests on the engine


class _Job:
    """The engine requests of one HTTP request (one per prompt), their events on an asyncio queue."""

    def __init__(self, engine: Engine, n: int):
        self.engine = engine
        self.n = n
        self.reqs: list[GenRequest] = []
        self.queue: asyncio.Queue = asyncio.Queue()
        self.loop = asyncio.get_running_loop()

    def add(self, **kw: Any) -> None:
        k = len(self.reqs)
        self.reqs.append(
            GenRequest(emit=lambda ev: self.loop.call_soon_threadsafe(self.queue.put_nowait, (k, ev)), **kw)
        )

    def start(self) -> None:
        try:
            for req in self.reqs:
                self.engine.submit(req)
        except QueueFull:
            self.cancel()
            raise ApiError(429, "too many requests are waiting; try again shortly", code="queue_full") from None
        except ShuttingDown:
            self.cancel()
            raise ApiError(503, "the server is shutting down", code="shutting_down") from None

    def cancel(self) -> None:
        for req in self.reqs:
            req.cancel()
        self.engine.wake()

    async def events(self, request: Request) -> AsyncIterator[tuple[int, tuple]]:
        """(choice index, event) until every row is done; an engine error is an ApiError; a client
        that leaves cancels the job (its rows are freed at the engine's next step)."""
        left = len(self.reqs) * self.n
        watcher = asyncio.create_task(_watch_disconnect(request, self))
        try:
            while left:
                k, ev = await self.queue.get()
                if ev[0] == "error":
                    status = 503 if "shutting down" in ev[1] else 500
                    raise ApiError(status, ev[1], code="shutting_down" if status == 503 else None)
                if ev[0] == "done":
                    left -= 1
                yield k * self.n + ev[1], ev
        finally:
            watcher.cancel()
            if left:
                self.cancel()


async def _watch_disconnect(request: Request, job: _Job) -> None:
    while True:
        await asyncio.sleep(0.05)
        if await request.is_disconnected():
            job.cancel()
            return


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def _include_usage(body: dict) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


async def _stream(
    job: _Job,
    request: Request,
    chunk: Callable[[int, tuple], dict | None],
    first: list[dict],
    usage: Callable[[int], dict] | None = None,
):
    """The SSE body: ``first`` chunks, then one per event, then (``stream_options.include_usage``)
    ``usage(completion_tokens)``'s chunk, then ``data: [DONE]``; an error after the stream began is
    an error chunk (OpenAI's object), then ``[DONE]``."""
    used = 0
    try:
        for c in first:
            yield _sse(c)
        async for index, ev in job.events(request):
            if ev[0] == "done":
                used += ev[4]
            c = chunk(index, ev)
            if c is not None:
                yield _sse(c)
        if usage is not None:
            yield _sse(usage(used))
    except ApiError as e:
        yield _sse(e.body())
    yield "data: [DONE]\n\n"


async def _collect(job: _Job, request: Request) -> tuple[dict, dict, dict, int]:
    """A non-streamed answer: each choice's text, finish reason and token logprobs, by index, and
    the completion tokens of all choices."""
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    lps: dict[int, list] = {}
    used = 0
    async for index, ev in job.events(request):
        texts[index] = texts.get(index, "") + ev[2]
        lps.setdefault(index, []).extend([ev[-1]] if ev[-1] else [])
        if ev[0] == "done":
            reasons[index] = ev[3]
            used += ev[4]
    return texts, reasons, lps, used


def _usage(n_prompt: int, used: int) -> dict[str, int]:
    return {"prompt_tokens": n_prompt, "completion_tokens": used, "total_tokens": n_prompt + used}


def _token_text(t: int) -> str:
    return decode([t])


def _completion_logprobs(lps: list[dict]) -> dict[str, Any]:
    tokens = [_token_text(lp["token"]) for lp in lps]
    offsets, pos = [], 0
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    return {
        "tokens": tokens,
        "token_logprobs": [lp["logprob"] for lp in lps],
        "top_logprobs": [{_token_text(t): v for t, v in lp["top"]} for lp in lps],
        "text_offset": offsets,
    }


def _chat_logprobs(lps: list[dict]) -> dict[str, Any]:
    def entry(t: int, v: float) -> dict[str, Any]:
        s = _token_text(t)
        return {"token": s, "logprob": v, "bytes": list(s.encode("utf-8"))}

    return {
        "content": [
            entry(lp["token"], lp["logprob"]) | {"top_logprobs": [entry(t, v) for t, v in lp["top"]]} for lp in lps
        ]
    }


# ---------------------------------------------------------------------------------------------
# The app


def create_app(
    served: ServedModel,
    *,
    api_key: str | None = None,
    cors_origin: str | None = None,
    max_body: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The FastAPI app for ``served``; every /v1 route wants ``Authorization: Bearer KEY`` when
    ``api_key`` is set."""
    app = FastAPI(title="gptcli serve", docs_url=None, redoc_url=None, openapi_url=None)
    classify_lock = threading.Lock()
    max_n = served.engine.max_batch if served.engine is not None else 1
    if cors_origin:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=[cors_origin], allow_methods=["GET", "POST"], allow_headers=["*"]
        )

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        return e.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        if e.status_code == 404:
            return ApiError(404, f"no route {request.method} {request.url.path}", code="not_found").response()
        if e.status_code == 405:
            return ApiError(405, f"{request.method} is not allowed on {request.url.path}").response()
        return ApiError(e.status_code, str(e.detail)).response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception) -> JSONResponse:
        return ApiError(500, f"internal error: {type(e).__name__}").response()

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if not given:
            raise ApiError(401, "missing API key: send the header 'Authorization: Bearer KEY'", code="missing_api_key")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "invalid API key", code="invalid_api_key")

    async def read_json(request: Request) -> dict[str, Any]:
        check_key(request)
        declared = request.headers.get("content-length")
        too_big = ApiError(413, f"the request body is over {max_body:,} bytes", code="request_too_large")
        if declared is not None and declared.isdigit() and int(declared) > max_body:
            await _drain(request, 64 * max_body)
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:
                await _drain(request, 64 * max_body)
                raise too_big
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the body is not valid JSON ({e})") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        model = body.get("model")
        if model is not None and model != served.name:
            raise ApiError(
                404, f"the model {str(model)[:100]!r} does not exist; this server has {served.name!r}",
                param="model", code="model_not_found",
            )  # fmt: skip
        return body

    def text_engine(what: str) -> Engine:
        if served.engine is None:
            raise ApiError(
                400,
                f"{served.name} is a classifier: it labels texts (POST /v1/classify) and does not generate; {what} "
                "needs a model that generates text",
                param="model",
                code="model_cannot_generate",
            )
        return served.engine

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files("gptcli.serve").joinpath("page.html").read_text("utf-8"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        load = served.engine.load() if served.engine is not None else {}
        return {"status": "ok", "model": served.name, **load}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        check_key(request)
        return {"object": "list", "data": [served.card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> dict[str, Any]:
        check_key(request)
        if model_id != served.name:
            raise ApiError(404, f"the model {model_id[:100]!r} does not exist", param="model", code="model_not_found")
        return served.card()

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body = await read_json(request)
        engine = text_engine("/v1/completions")
        s = _sampling(body, max_n=max_n)
        logprobs = _int(body, "logprobs", 0, MAX_LOGPROBS)
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ApiError(400, "prompt must be a string or a non-empty list of strings", param="prompt")
        if len(prompts) * s.n > engine.max_batch:
            raise ApiError(
                400, f"{len(prompts)} prompts x n={s.n} is more than the {engine.max_batch} rows the server decodes at "
                "once (--max-batch)", param="n",
            )  # fmt: skip
        if _field(body, "echo", (bool,), "true or false", False):
            raise ApiError(400, "echo is not supported", param="echo")
        job = _Job(engine, s.n)
        n_prompt = 0
        for p in prompts:
            ids = encode(p) if p else [EOT_ID]  # an empty prompt starts from <|endoftext|>, as gptcli sample
            max_tokens = _max_tokens(s, len(ids), served.context_length, DEFAULT_MAX_NEW_TOKENS, param="prompt")
            n_prompt += len(ids)
            stops = s.stop
            job.add(
                ids=ids, max_tokens=max_tokens, n=s.n, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                seed=s.seed, logprobs=logprobs, view=lambda text, final, stops=stops: cut_at_stops(text, stops, final=final),
            )  # fmt: skip
        head = {"id": "cmpl-" + secrets.token_hex(12), "created": int(time.time()), "model": served.name}
        job.start()
        if s.stream:

            def chunk(index: int, ev: tuple) -> dict | None:
                text, lp = ev[2], ev[-1]
                choice = {"index": index, "text": text, "logprobs": None, "finish_reason": None}
                if logprobs is not None:
                    choice["logprobs"] = _completion_logprobs([lp] if lp else [])
                if ev[0] == "done":
                    choice["finish_reason"] = ev[3]
                elif not text and lp is None:
                    return None
                return {**head, "object": "text_completion", "choices": [choice]}

            usage = None
            if _include_usage(body):

                def usage(used: int) -> dict:
                    return {**head, "object": "text_completion", "choices": [], "usage": _usage(n_prompt, used)}

            return StreamingResponse(_stream(job, request, chunk, [], usage), media_type="text/event-stream")
        texts, reasons, lps, used = await _collect(job, request)
        choices = [
            {
                "index": i,
                "text": texts.get(i, ""),
                "logprobs": _completion_logprobs(lps.get(i, [])) if logprobs is not None else None,
                "finish_reason": reasons[i],
            }
            for i in sorted(reasons)
        ]
        return {**head, "object": "text_completion", "choices": choices, "usage": _usage(n_prompt, used)}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        body = await read_json(request)
        engine = text_engine("/v1/chat/completions")
        s = _sampling(body, max_n=max_n)
        want_lp = _field(body, "logprobs", (bool,), "true or false", False)
        top = _int(body, "top_logprobs", 0, MAX_LOGPROBS, 0)
        try:
            messages = check_messages(body.get("messages"))
        except ChatError as e:
            raise ApiError(400, str(e), param=e.param) from None
        fmt = served.chat
        ctx = served.context_length
        reserve = s.max_tokens if isinstance(s.max_tokens, int) and s.max_tokens > 0 else min(CHAT_MAX_TOKENS, ctx // 4)
        messages, dropped = trim_messages(messages, fmt, budget=max(ctx - reserve, 0))
        ids = encode(fmt.prompt(messages))
        max_tokens = _max_tokens(s, len(ids), ctx, CHAT_MAX_TOKENS, param="messages")
        stops = fmt.stops + s.stop

        def view(text: str, final: bool) -> tuple[str, bool]:
            cut, stopped = cut_at_stops(text, stops, final=final)
            return fmt.answer(cut, final=final or stopped), stopped

        job = _Job(engine, s.n)
        job.add(
            ids=ids, max_tokens=max_tokens, n=s.n, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
            seed=s.seed, logprobs=top if want_lp else None, view=view,
        )  # fmt: skip
        head = {"id": "chatcmpl-" + secrets.token_hex(12), "created": int(time.time()), "model": served.name}
        extra = {"gptcli": {"dropped_turns": dropped}}
        job.start()
        if s.stream:

            def chunk(index: int, ev: tuple) -> dict | None:
                text, lp = ev[2], ev[-1]
                choice: dict[str, Any] = {"index": index, "delta": {}, "logprobs": None, "finish_reason": None}
                if text:
                    choice["delta"]["content"] = text
                if want_lp and lp:
                    choice["logprobs"] = _chat_logprobs([lp])
                if ev[0] == "done":
                    choice["finish_reason"] = ev[3]
                elif not text and not (want_lp and lp):
                    return None
                return {**head, "object": "chat.completion.chunk", "choices": [choice]}

            first = [
                {
                    **head,
                    "object": "chat.completion.chunk",
                    **extra,
                    "choices": [
                        {
                            "index": i,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                        for i in range(s.n)
                    ],
                }
            ]

            usage = None
            if _include_usage(body):

                def usage(used: int) -> dict:
                    return {**head, "object": "chat.completion.chunk", "choices": [], "usage": _usage(len(ids), used)}

            return StreamingResponse(_stream(job, request, chunk, first, usage), media_type="text/event-stream")
        texts, reasons, lps, used = await _collect(job, request)
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": texts.get(i, "")},
                "logprobs": _chat_logprobs(lps.get(i, [])) if want_lp else None,
                "finish_reason": reasons[i],
            }
            for i in sorted(reasons)
        ]
        return {**head, "object": "chat.completion", "choices": choices, "usage": _usage(len(ids), used), **extra}

    @app.post("/v1/classify")
    async def classify(request: Request) -> Any:
        body = await read_json(request)
        if served.classify is None:
            raise ApiError(
                400, f"{served.name} generates text and has no labels: /v1/classify needs a classify run "
                "(gptcli finetune classify)", param="model", code="model_cannot_classify",
            )  # fmt: skip
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise ApiError(400, "input must be a string or a non-empty list of strings", param="input")
        if len(texts) > MAX_CLASSIFY_INPUTS:
            raise ApiError(400, f"input has {len(texts)} texts; at most {MAX_CLASSIFY_INPUTS}", param="input")

        def run() -> list[list[float]]:
            with classify_lock:
                return served.classify(texts)

        probs = await asyncio.to_thread(run)
        data = []
        for i, p in enumerate(probs):
            k = max(range(len(p)), key=p.__getitem__)
            data.append(
                {
                    "index": i,
                    "label": served.labels[k],
                    "probability": p[k],
                    "probabilities": dict(zip(served.labels, p)),
                }
            )
        n_tokens = sum(len(encode(t)) for t in texts)
        return {"object": "list", "model": served.name, "data": data, "usage": {"prompt_tokens": n_tokens}}

    return app


async def _drain(request: Request, limit: int) -> None:
    """Read and drop the rest of a refused body (up to ``limit`` bytes), so the client, still
    sending, gets the answer instead of a broken pipe."""
    seen = 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > limit:
                return
    except Exception:  # noqa: BLE001  (a client gone or a stream already read: nothing to drain)
        return
