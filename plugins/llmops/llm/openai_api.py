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
next decode step. ``openapi_document()`` describes these routes (request and response schemas,
errors); ``OpenAPIRoutes`` adds them to the hosting service's /docs.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from llmops.llm.backends import Backend, Completion, SamplingParams

log = logging.getLogger(__name__)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class StreamOptions(BaseModel):
    include_usage: bool = False


SEED_LIMIT = 2**64  # torch.Generator takes seeds in [0, 2**64)


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = Field(None, ge=0, lt=SEED_LIMIT)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # an end-user id for the caller's own records; not used in generation
    # OpenAI parameters not implemented here: accepted only at their "off" value (see UNSUPPORTED)
    n: int = Field(1, ge=1)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    response_format: dict[str, Any] | None = None


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(_Common):
    prompt: str = Field(min_length=1)
    logprobs: int | None = None
    echo: bool | None = None
    best_of: int | None = None
    suffix: str | None = None


# parameter -> the values that ask for nothing (what a client sends when it does not use it)
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "logit_bias": (None, {}),
    "response_format": (None, {"type": "text"}),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "echo": (None, False),
    "best_of": (None, 1),
    "suffix": (None, ""),
}


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
    return isinstance(part, str) and (part in _TYPE_TAGS or "[" in part)


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

    def sampling(body: _Common, prompt: str) -> SamplingParams:
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
        return SamplingParams(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                              stop=stop, seed=body.seed)  # fmt: skip

    async def models(request: Request) -> JSONResponse:
        item = {"id": model_name, "object": "model", "created": created, "owned_by": "llmops",
                "root": backend.model_path, "max_model_len": backend.max_context}  # fmt: skip
        return JSONResponse({"object": "list", "data": [item]})

    async def respond(request: Request, chat: bool) -> JSONResponse | StreamingResponse:
        try:
            body = await parse(request, ChatRequest if chat else CompletionRequest)
            check_supported(body)
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
        try:
            done = await _complete_unless_gone(request, backend.stream(prompt, params))
        except Exception as exc:  # the model failed on this request: a server error, in OpenAI's shape
            log.exception("generation failed")
            body = {"error": {"message": f"generation failed: {type(exc).__name__}", "type": "server_error",
                              "param": None, "code": "generation_failed"}}  # fmt: skip
            return JSONResponse(body, status_code=500)
        if done is None:  # the client went away: its generation was cancelled, nobody reads this
            return JSONResponse({"error": "client disconnected"}, status_code=499)
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


async def _complete_unless_gone(request: Request, pieces: Iterator[Any]) -> Completion | None:
    """The Completion at the end of ``pieces``, or None when the client went away first, in which
    case the generation is cancelled (its batch slot freed) instead of run to the end."""

    async def last() -> Completion:
        done = None
        async for item in _drain(pieces):
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


# ---- the OpenAPI description of these routes ------------------------------------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """Every 4xx of these routes: OpenAI's error shape, ``param`` naming the field."""

    error: ErrorDetail


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletion(BaseModel):
    """The answer to a chat completion without ``stream``; with ``stream`` the same fields come as
    server-sent events of ``chat.completion.chunk`` objects ending in ``data: [DONE]``."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class TextChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class TextCompletion(BaseModel):
    """The answer to a text completion without ``stream`` (see ChatCompletion for streaming)."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


def _openapi_30(schema: Any) -> Any:
    """pydantic's JSON Schema (2020-12) as OpenAPI 3.0, which BentoML's document declares:
    ``anyOf [X, null]`` becomes ``X`` + ``nullable``, ``const`` an ``enum``, numeric
    ``exclusiveMinimum/Maximum`` the 3.0 boolean form, ``$defs`` references components."""
    if isinstance(schema, list):
        return [_openapi_30(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _openapi_30(v) for k, v in schema.items() if k not in ("$defs", "title")}
    if "$ref" in out:
        return {"$ref": out["$ref"].replace("#/$defs/", "#/components/schemas/")}
    if out.get("type") == "null":
        return {"nullable": True, "enum": [None]}
    for key in ("anyOf", "oneOf"):
        options = out.get(key)
        if options and any(o.get("nullable") and o.get("enum") == [None] for o in options):
            rest = [o for o in options if not (o.get("nullable") and o.get("enum") == [None])]
            del out[key]
            if len(rest) == 1 and "$ref" not in rest[0]:
                out |= rest[0]
            elif len(rest) == 1:
                out["allOf"] = rest
            else:
                out[key] = rest
            out["nullable"] = True
    if "const" in out:
        out["enum"] = [out.pop("const")]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), int | float) and not isinstance(out.get(bound), bool):
            out[plain], out[bound] = out[bound], True
    return out


def _component(model: type[BaseModel], components: dict[str, Any]) -> dict[str, str]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in schema.get("$defs", {}).items():
        components[name] = _openapi_30(sub)
    components[model.__name__] = _openapi_30(schema)
    return {"$ref": f"#/components/schemas/{model.__name__}"}


# one server-sent event of a streamed answer: ``data`` is a JSON chunk, the last one ``[DONE]``
SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string", "description": "a JSON chunk object, or [DONE] at the end"}},
}


def openapi_document(prefix: str = "/v1", model_name: str | None = None) -> dict[str, Any]:
    """``{"paths": ..., "components": {"schemas": ...}}`` for the routes under ``prefix``, in the
    OpenAPI 3.0 form of BentoML's /docs.json, so fuzzers and client generators see them. With
    ``model_name`` the requests' ``model`` is declared as that one name (the server has one)."""
    components: dict[str, Any] = {}
    error = {"application/json": {"schema": _component(ErrorBody, components)}}
    errors = {
        "400": {"description": "A bad request; `error.param` names the field", "content": error},
        "404": {"description": "The model is not served here (`error.param` is `model`)", "content": error},
    }

    def post(summary: str, request: type[BaseModel], answer: type[BaseModel]) -> dict[str, Any]:
        return {
            "post": {
                "summary": summary,
                "tags": ["OpenAI"],
                "operationId": f"openai_{answer.__name__}",
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": _component(request, components)}}},
                "responses": {
                    "200": {
                        "description": "The completion; with `stream: true`, server-sent events",
                        "content": {
                            "application/json": {"schema": _component(answer, components)},
                            "text/event-stream": {"schema": SSE_EVENT},
                        },
                    },
                    **errors,
                },
            }
        }  # fmt: skip

    models = {"application/json": {"schema": _component(ModelList, components)}}
    paths = {
        f"{prefix}/models": {
            "get": {
                "summary": "The served model",
                "tags": ["OpenAI"],
                "operationId": "openai_models",
                "responses": {"200": {"description": "One model", "content": models}},
            }
        },
        f"{prefix}/chat/completions": post("Chat completion, OpenAI style", ChatRequest, ChatCompletion),
        f"{prefix}/completions": post("Text completion, OpenAI style", CompletionRequest, TextCompletion),
    }
    if model_name is not None:
        for name in ("ChatRequest", "CompletionRequest"):
            components[name]["properties"]["model"]["enum"] = [model_name]
    return {"paths": paths, "components": {"schemas": components}}


class OpenAPIRoutes:
    """ASGI middleware for the hosting BentoML service: adds ``openapi_document(prefix)`` to its
    ``GET /docs.json`` (BentoML documents a mounted Starlette app's routes nowhere)."""

    def __init__(self, app: Any, prefix: str = "/v1", model_name: str | None = None) -> None:
        self.app = app
        self.document = openapi_document(prefix, model_name)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] != "/docs.json":
            return await self.app(scope, receive, send)
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def keep(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, keep)
        body = b"".join(chunks)
        if start.get("status") == 200:
            with contextlib.suppress(ValueError):
                spec = json.loads(body)
                spec.setdefault("paths", {}).update(self.document["paths"])
                schemas = spec.setdefault("components", {}).setdefault("schemas", {})
                schemas.update(self.document["components"]["schemas"])
                body = json.dumps(spec).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": start.get("status", 500), "headers": headers})
        await send({"type": "http.response.body", "body": body})
