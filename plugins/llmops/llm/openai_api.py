"""The OpenAI-compatible HTTP API over a backend, as a Starlette app (services/llm.py mounts it
at /v1): ``GET /models``, ``POST /chat/completions``, ``POST /completions``; ``"stream": true``
answers with server-sent events ending in ``data: [DONE]``. Usage counts come with every answer
(and, streaming, with the last chunk when ``stream_options.include_usage`` is set).

Bad requests are 400 with OpenAI's error shape ``{"error": {"message", "type", "param", "code"}}``,
``param`` naming the field: max_tokens over the limit, prompt + max_tokens over the context,
temperature outside [0, 2], a seed outside [0, 2**64), an unknown model, malformed messages, and
every OpenAI parameter this server does not implement when it asks for something (``logprobs``,
``top_logprobs``, ``n`` > 1, penalties, ``logit_bias``, tools and functions, a JSON
``response_format``, ``echo``, ``best_of``, ``suffix``): code ``unsupported_parameter``, never
silently ignored. Fields OpenAI's API does not define are ignored, as OpenAI-compatible servers do.

A request whose client goes away is cancelled, streaming or not: its batch slot is freed at the
next decode step. Each request that reaches generation is reported once it ends (streamed ones
when the stream ends, a client that left included) to the ``on_answered`` callback the hosting
service gives: services/llm.py logs it (:class:`llmops.llm.answered.AnsweredRequest`). The request
and response schemas, and the OpenAPI description of these routes
that the hosting service adds to its /docs.json, are :mod:`llmops.llm.openai_schemas`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from llmops.llm.answered import AnsweredRequest, report, reported
from llmops.llm.openai_schemas import UNSUPPORTED, ChatRequest, CompletionRequest
from llmops.llm.types import Backend, Completion, SamplingParams
from llmops.tracing import annotate, start, tracer

log = logging.getLogger(__name__)


def check_supported(body: BaseModel) -> None:
    """400 naming the first parameter that asks for something this server does not do."""
    for name, off in UNSUPPORTED.items():
        if name in type(body).model_fields:
            value = getattr(body, name)
            if value is not None and not any(value == o for o in off):
                raise ApiError(400, f"{name}: {value!r} is not supported by this server; leave it unset",
                               name, "unsupported_parameter")  # fmt: skip


class ApiLimits(BaseModel):
    max_tokens: int = 512  # largest max_tokens a request may ask for
    default_max_tokens: int = 128


def _error(status: int, message: str, param: str | None, code: str = "invalid_request_error") -> JSONResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def usage_of(done: Completion) -> dict[str, int]:
    total = done.prompt_tokens + done.completion_tokens
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": total,
    }


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str = "invalid_value"):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "none", "dict", "list"})


def _is_union_tag(part: Any) -> bool:
    """pydantic names the member of a union in an error's location (``stop.list[str]``): not a field."""
    return isinstance(part, str) and (part in _TYPE_TAGS or "[" in part or part.startswith("constrained-"))


def shown_model(release: str | None, model_path: str) -> str:
    """What the API says it serves, never a path on the server: the registry release it was loaded
    from (``llm:3f2a...``), else the model folder's name (a hub id as it is)."""
    if release:
        return release
    path = Path(model_path)
    return path.name if path.is_absolute() or path.exists() else model_path


def openai_app(
    backend: Backend | Callable[[], Backend],
    model_name: str,
    limits: ApiLimits,
    root: Callable[[], str] | None = None,
    on_answered: Callable[[AnsweredRequest], None] | None = None,
    traced: Callable[[Backend], dict[str, Any]] | None = None,
) -> Starlette:
    """The API for ``backend``, serving it under the name ``model_name``. ``backend`` may be a
    function returning the backend that serves now (a service that follows its release): each
    request calls it once and uses only that backend, so a swap never splits a request. ``root``
    says what /models calls the model served now (default: :func:`shown_model` of its folder);
    ``on_answered`` is called once per request that reached generation, when it ends. Each such
    request has a ``generate`` span (:mod:`llmops.tracing`) from the moment it is handed to the
    backend to its end, with its tokens, finish reason and time to the first token; ``traced``
    gives the attributes that name the backend's release, set on it and on the request's span."""
    created = int(time.time())
    current = backend if callable(backend) and not hasattr(backend, "stream") else lambda: backend
    shown = root or (lambda: shown_model(None, current().model_path))

    async def parse(request: Request, model: type[BaseModel]) -> Any:
        try:
            raw = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(400, "the body is not valid JSON", None, "invalid_json") from None
        if not isinstance(raw, dict):
            raise ApiError(400, "the body must be a JSON object", None)
        for key, value in raw.items():  # JSON may escape half a surrogate pair; no tokenizer takes it
            try:
                json.dumps(value, ensure_ascii=False).encode()
            except UnicodeEncodeError:
                raise ApiError(400, f"{key}: text with an unpaired surrogate (\\ud800-\\udfff) is not valid "
                               "Unicode", str(key)) from None  # fmt: skip
        try:
            body = model.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first["loc"] if not _is_union_tag(p)) or None
            raise ApiError(400, f"{param}: {first['msg']}", param) from None
        if body.model != model_name:
            raise ApiError(404, f"model {body.model!r} does not exist; this server has {model_name!r}",
                           "model", "model_not_found")  # fmt: skip
        return body

    def sampling(
        body: ChatRequest | CompletionRequest, prompt: str, backend: Backend
    ) -> tuple[SamplingParams, int]:
        asked = body.max_completion_tokens or body.max_tokens
        field = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        if asked is not None and asked > limits.max_tokens:
            raise ApiError(400, f"{field}: {asked} is over this server's limit of {limits.max_tokens}", field)
        max_tokens = asked or min(limits.default_max_tokens, limits.max_tokens)
        used = backend.count_tokens(prompt)
        if used + max_tokens > backend.max_context:
            param = "messages" if isinstance(body, ChatRequest) else "prompt"
            raise ApiError(
                400,
                f"this model's context is {backend.max_context} tokens; the {param} has {used} and "
                f"{field} asks for {max_tokens}: shorten the {param} or lower {field}",
                param,
                "context_length_exceeded",
            )
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        params = SamplingParams(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                                stop=stop, seed=body.seed)  # fmt: skip
        return params, used

    async def models(request: Request) -> JSONResponse:
        backend = current()
        item = {"id": model_name, "object": "model", "created": created, "owned_by": "llmops",
                "root": shown(), "max_model_len": backend.max_context}  # fmt: skip
        return JSONResponse({"object": "list", "data": [item]})

    async def respond(request: Request, chat: bool) -> JSONResponse | StreamingResponse:
        backend = current()  # once: this request renders, counts and generates with one release
        try:
            body = await parse(request, ChatRequest if chat else CompletionRequest)
            check_supported(body)
            prompt = backend.render([m.model_dump() for m in body.messages]) if chat else body.prompt
            params, prompt_tokens = sampling(body, prompt, backend)
        except ApiError as exc:
            return _error(exc.status, exc.message, exc.param, exc.code)
        except RecursionError:  # served without llmops.serving's depth limit in front
            return _error(400, "the JSON body nests too deep", None, "json_too_deep")
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        kind = "chat.completion" if chat else "text_completion"
        messages = [m.model_dump() for m in body.messages] if chat else None
        answered = AnsweredRequest(ident, request.url.path, body.stream, prompt, backend, prompt_tokens,
                                   messages=messages, params=params)  # fmt: skip
        if tracer() is not None:
            release = traced(backend) if traced is not None else {}
            annotate(request_id=ident, **release)
            answered.span = start("generate", operation="chat" if chat else "text_completion",
                                  request_model=model_name, response_id=ident, max_tokens=params.max_tokens,
                                  temperature=params.temperature, top_p=params.top_p, seed=params.seed,
                                  input_tokens=prompt_tokens, stream=body.stream, **release)  # fmt: skip
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = _events(backend.stream(prompt, params), ident, kind, model_name, chat, include_usage,
                             answered)  # fmt: skip
            return StreamingResponse(reported(events, answered, on_answered), media_type="text/event-stream")
        try:
            done = await _complete_unless_gone(request, backend.stream(prompt, params), answered)
        except Exception as exc:  # the model failed on this request: a server error, in OpenAI's shape
            log.exception("generation failed")
            answered.status, answered.error = 500, f"generation failed: {type(exc).__name__}: {exc}"
            report(on_answered, answered)
            body = {"error": {"message": f"generation failed: {type(exc).__name__}", "type": "server_error",
                              "param": None, "code": "generation_failed"}}  # fmt: skip
            return JSONResponse(body, status_code=500)
        if done is None:  # the client went away: its generation was cancelled, nobody reads this
            answered.status, answered.error = 499, "client disconnected"
            report(on_answered, answered)
            return JSONResponse({"error": "client disconnected"}, status_code=499)
        answered.done = done
        report(on_answered, answered)
        choice: dict[str, Any] = {"index": 0, "finish_reason": done.finish_reason, "logprobs": None}
        choice |= {"message": {"role": "assistant", "content": done.text}} if chat else {"text": done.text}
        return JSONResponse({"id": ident, "object": kind, "created": int(time.time()), "model": model_name,
                             "choices": [choice], "usage": usage_of(done)})  # fmt: skip

    async def chat_completions(request: Request):
        return await respond(request, chat=True)

    async def completions(request: Request):
        return await respond(request, chat=False)

    return Starlette(
        routes=[
            Route("/models", models, methods=["GET"]),
            Route("/chat/completions", chat_completions, methods=["POST"]),
            Route("/completions", completions, methods=["POST"]),
        ]
    )


# Blocking backend iterators are read by a thread of their own per request, not in asyncio's
# shared default pool: that pool has cpu+4 threads, so with more requests than that a finished
# generation would wait for a free thread, and the engines would never see enough requests to batch.
_END = object()


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body is read: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _complete_unless_gone(
    request: Request, pieces: Iterator[Any], answered: AnsweredRequest | None = None
) -> Completion | None:
    """The Completion at the end of ``pieces``, or None when the client went away first, in which
    case the generation is cancelled (its batch slot freed) instead of run to the end. The text
    pieces are recorded in ``answered`` as they come."""

    async def last() -> Completion:
        done = None
        async for item in _drain(pieces):
            if answered is not None and isinstance(item, str):
                answered.piece(item)
            done = item
        if not isinstance(done, Completion):
            raise RuntimeError("the backend's stream ended without a Completion")
        return done

    generating = asyncio.ensure_future(last())
    watching = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait({generating, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
        if not generating.done():
            generating.cancel()  # _drain's cleanup cancels the backend's request
    if generating.cancelled() or not generating.done():
        return None
    return generating.result()


async def _drain(pieces: Iterator[Any]) -> AsyncIterator[Any]:
    """The items of a blocking iterator, read by a thread of this stream's own and handed to the
    event loop as they come. When the reader stops early (the client went away), the iterator is
    closed, which stops its generation (the backends abort on close)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    stop = threading.Event()

    def hand(item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: the server is stopping
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def pump() -> None:
        try:
            for item in pieces:
                if stop.is_set():
                    break
                hand(item)
        except BaseException as exc:  # handed to the reader, which raises it
            hand(exc)
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()
        hand(_END)

    threading.Thread(target=pump, name="stream", daemon=True).start()
    try:
        while (item := await queue.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        cancel = getattr(pieces, "cancel", None)  # at once, not when the next piece comes
        if cancel is not None:
            cancel()


async def _events(
    pieces: Iterator[str | Completion],
    ident: str,
    kind: str,
    model: str,
    chat: bool,
    include_usage: bool,
    answered: AnsweredRequest | None = None,
) -> AsyncIterator[str]:
    """Server-sent events from the backend's stream (pulled off the event loop, piece by piece);
    the text and the final Completion are recorded in ``answered``."""
    created = int(time.time())
    obj = "chat.completion.chunk" if chat else kind

    def chunk(delta: str | None, finish: str | None, role: bool = False) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if chat:
            choice["delta"] = ({"role": "assistant"} if role else {}) | ({"content": delta} if delta else {})
        else:
            choice["text"] = delta or ""
        return {"id": ident, "object": obj, "created": created, "model": model, "choices": [choice]}

    if chat:
        yield f"data: {json.dumps(chunk('', None, role=True))}\n\n"
    async for piece in _drain(pieces):
        if isinstance(piece, Completion):
            if answered is not None:
                answered.done = piece
            yield f"data: {json.dumps(chunk(None, piece.finish_reason))}\n\n"
            if include_usage:
                last = {"id": ident, "object": obj, "created": created, "model": model, "choices": []}
                last["usage"] = usage_of(piece)
                yield f"data: {json.dumps(last)}\n\n"
        else:
            if answered is not None:
                answered.piece(piece)
            yield f"data: {json.dumps(chunk(piece, None))}\n\n"
    yield "data: [DONE]\n\n"
