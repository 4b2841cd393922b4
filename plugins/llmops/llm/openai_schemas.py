"""The OpenAI-compatible API's request and response schemas, and the OpenAPI description of its
routes (:mod:`llmops.llm.openai_api` serves them).

Requests (:class:`ChatRequest`, :class:`CompletionRequest`) ignore fields OpenAI's API does not
define and accept the OpenAI parameters this server does not implement only at their "off" value
(:data:`UNSUPPORTED`), which is all the document allows them. Every list and string but the text
itself is bounded (the text is bounded by the body limit and the model's context). The document
says exactly what the server accepts: a request it allows is answered 200 unless its prompt and
``max_tokens`` overflow the model's context, which a schema cannot say.

The response models are not used to build answers (the app writes plain dicts, for speed on the
streaming path); they describe them: ``openapi_document()`` turns every model into OpenAPI 3.0
components, and ``OpenAPIRoutes`` adds them to the hosting BentoML service's /docs.json, so
fuzzers and client generators see the /v1 routes.
"""

from __future__ import annotations

import contextlib
import json
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)

# bounds on a request's lists and names: far above what a client sends, far below what would cost
# the server (a stop string is searched for after every token)
MAX_MESSAGES = 1000
MAX_STOP_CHARS = 256
MAX_NAME_CHARS = 256  # model, user


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class StreamOptions(BaseModel):
    include_usage: bool = False


SEED_LIMIT = 2**64  # torch.Generator takes seeds in [0, 2**64)
StopText = Annotated[str, Field(max_length=MAX_STOP_CHARS)]


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        """JSON ``false`` is not 0: pydantic would read it as one (``"seed": false``), where the
        document declares a number."""
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool) and annotation is not bool and bool not in get_args(annotation):
            raise ValueError("must not be a boolean")
        return value

    model: str = Field(max_length=MAX_NAME_CHARS)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: StopText | Annotated[list[StopText], Field(max_length=4)] | None = None
    seed: int | None = Field(None, ge=0, lt=SEED_LIMIT)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(
        None, max_length=MAX_NAME_CHARS
    )  # an end-user id for the caller's own records; not used in generation
    # OpenAI parameters not implemented here: accepted only at their "off" value (see UNSUPPORTED)
    n: int = Field(1, ge=1)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    response_format: dict[str, Any] | None = None


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
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


def _off_values(model: type[BaseModel]) -> dict[str, dict[str, Any]]:
    """The document's schema of each parameter of ``model`` that this server does not implement:
    only its "off" values that are of the field's type (``logprobs`` is false for a chat and 0 for
    a text completion)."""

    def fits(annotation: Any, value: Any) -> bool:
        try:
            TypeAdapter(annotation).validate_python(value, strict=True)
        except ValidationError:
            return False
        return True

    schemas = {}
    for name, off in UNSUPPORTED.items():
        if name in model.model_fields:
            values = [v for v in off if fits(model.model_fields[name].annotation, v)]
            schemas[name] = {
                "enum": values,
                "description": "not supported by this server: only its off value",
            }
            if None in values:
                schemas[name]["nullable"] = True
    return schemas


# ---- the answers, as the OpenAPI document describes them -----------------------------------------


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


def openapi_document(
    prefix: str = "/v1", model_name: str | None = None, max_tokens: int | None = None
) -> dict[str, Any]:
    """``{"paths": ..., "components": {"schemas": ...}}`` for the routes under ``prefix``, in the
    OpenAPI 3.0 form of BentoML's /docs.json, so fuzzers and client generators see them. With
    ``model_name`` the requests' ``model`` is declared as that one name (the server has one), with
    ``max_tokens`` the largest ``max_tokens`` it takes (the service's LLMOPS_LLM_MAX_TOKENS)."""
    components: dict[str, Any] = {}
    error = {"application/json": {"schema": _component(ErrorBody, components)}}
    errors = {
        "400": {"description": "A bad request; `error.param` names the field", "content": error},
        "404": {"description": "The model is not served here (`error.param` is `model`)", "content": error},
        "413": {"description": "Request body too large (LLMOPS_MAX_BODY_BYTES)", "content": error},
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
    for request in (ChatRequest, CompletionRequest):
        properties = components[request.__name__]["properties"]
        properties.update(_off_values(request))
        if model_name is not None:
            properties["model"]["enum"] = [model_name]
        if max_tokens is not None:
            for name in ("max_tokens", "max_completion_tokens"):
                properties[name]["maximum"] = max_tokens
    return {"paths": paths, "components": {"schemas": components}}


class OpenAPIRoutes:
    """ASGI middleware for the hosting BentoML service: adds ``openapi_document(prefix)`` to its
    ``GET /docs.json`` (BentoML documents a mounted Starlette app's routes nowhere)."""

    def __init__(
        self, app: Any, prefix: str = "/v1", model_name: str | None = None, max_tokens: int | None = None
    ) -> None:
        self.app = app
        self.document = openapi_document(prefix, model_name, max_tokens)

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
