"""The OpenAI-compatible HTTP API over a backend, as a Starlette app (services/llm.py mounts it
at /v1): ``GET /models``, ``POST /chat/completions``, ``POST /completions``; ``"stream": true``
answers with server-sent events ending in ``data: [DONE]``. Usage counts come with every answer
(and, streaming, with the last chunk when ``stream_options.include_usage`` is set).

Bad requests are 400 with OpenAI's error shape ``{"error": {"message", "type", "param", "code"}}``,
``param`` naming the field: max_tokens over the limit, prompt + max_tokens over the context,
temperature outside [0, 2], an unknown model, malformed messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from llmops.llm.backends import Backend, Completion, SamplingParams


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1)  # one choice per request


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(_Common):
    prompt: str = Field(min_length=1)


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


def openai_app(backend: Backend, model_name: str, limits: ApiLimits) -> Starlette:
    """The API for ``backend``, serving it under the name ``model_name``."""
    created = int(time.time())

    async def parse(request: Request, model: type[BaseModel]) -> Any:
        try:
            raw = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(400, "the body is not valid JSON", None, "invalid_json") from None
        if not isinstance(raw, dict):
            raise ApiError(400, "the body must be a JSON object", None)
        try:
            body = model.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first["loc"]) or None
            raise ApiError(400, f"{param}: {first['msg']}", param) from None
        if body.model != model_name:
            raise ApiError(404, f"model {body.model!r} does not exist; this server has {model_name!r}",
                           "model", "model_not_found")  # fmt: skip
        return body

    def sampling(body: _Common, prompt: str) -> SamplingParams:
        asked = body.max_completion_tokens or body.max_tokens
        field = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        if asked is not None and asked > limits.max_tokens:
            raise ApiError(400, f"{field}: {asked} is over this server's limit of {limits.max_tokens}", field)
        max_tokens = asked or limits.default_max_tokens
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
        return SamplingParams(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                              stop=stop, seed=body.seed)  # fmt: skip

    async def models(request: Request) -> JSONResponse:
        item = {"id": model_name, "object": "model", "created": created, "owned_by": "llmops",
                "root": backend.model_path, "max_model_len": backend.max_context}  # fmt: skip
        return JSONResponse({"object": "list", "data": [item]})

    async def respond(request: Request, chat: bool) -> JSONResponse | StreamingResponse:
        try:
            body = await parse(request, ChatRequest if chat else CompletionRequest)
            prompt = backend.render([m.model_dump() for m in body.messages]) if chat else body.prompt
            params = sampling(body, prompt)
        except ApiError as exc:
            return _error(exc.status, exc.message, exc.param, exc.code)
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        kind = "chat.completion" if chat else "text_completion"
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = _events(backend.stream(prompt, params), ident, kind, model_name, chat, include_usage)
            return StreamingResponse(events, media_type="text/event-stream")
        done = await _in_own_thread(backend.complete, prompt, params)
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


# Blocking backend calls run in a thread of their own per request, not in asyncio's shared
# default pool: that pool has cpu+4 threads, so with more requests than that a finished
# generation would wait for a free thread, and vLLM would never see enough requests to batch.
_END = object()


async def _in_own_thread(fn: Any, *args: Any) -> Any:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(setter: Any, value: Any) -> None:
        if not future.done():  # the request may have been cancelled meanwhile
            setter(value)

    def run() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:
            loop.call_soon_threadsafe(settle, future.set_exception, exc)
        else:
            loop.call_soon_threadsafe(settle, future.set_result, result)

    threading.Thread(target=run, name="complete", daemon=True).start()
    return await future


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


async def _events(
    pieces: Iterator[str | Completion], ident: str, kind: str, model: str, chat: bool, include_usage: bool
) -> AsyncIterator[str]:
    """Server-sent events from the backend's stream (pulled off the event loop, piece by piece)."""
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
            yield f"data: {json.dumps(chunk(None, piece.finish_reason))}\n\n"
            if include_usage:
                last = {"id": ident, "object": obj, "created": created, "model": model, "choices": []}
                last["usage"] = usage_of(piece)
                yield f"data: {json.dumps(last)}\n\n"
        else:
            yield f"data: {json.dumps(chunk(piece, None))}\n\n"
    yield "data: [DONE]\n\n"
