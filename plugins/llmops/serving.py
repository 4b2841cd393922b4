"""What every service shares: settings (read by ``llmops.settings``), the optional bearer API key,
JSON-only POSTs, a request-body limit, loopback-only ``/reload`` without a key (ASGI middlewares,
added with ``Service.add_asgi_middleware``), and client errors logged as one line."""

from __future__ import annotations

import hmac
import ipaddress
import itertools
import logging
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, SecretStr, ValidationError, field_validator
from starlette.responses import JSONResponse

from llmops.openapi_doc import OpenAPIFix, fix_openapi

# the services import their reader from here; llmops.settings is the one module that reads the environment
from llmops.settings import (  # noqa: F401
    RENAMED_SETTINGS,
    SettingsError,
    set_library_setting,
    settings_from_env,
)

logger = logging.getLogger("bentoml.llmops.serving")
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024


async def _reject(
    scope: dict[str, Any],
    receive: Any,
    send: Any,
    status: int,
    error: str,
    headers: dict[str, str] | None = None,
) -> None:
    await JSONResponse({"error": error}, status_code=status, headers=headers)(scope, receive, send)


class JSONOnly:
    """ASGI middleware: answer form posts 415. BentoML would parse them as forms (and a
    multipart body without a boundary as a 500); ``curl -d`` sends one by default."""

    FORM_TYPES = frozenset({b"multipart/form-data", b"application/x-www-form-urlencoded"})

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            content_type = dict(scope["headers"]).get(b"content-type", b"")
            if content_type.split(b";")[0].strip().lower() in self.FORM_TYPES:
                return await _reject(
                    scope, receive, send, 415, "send JSON with 'Content-Type: application/json'"
                )
        return await self.app(scope, receive, send)


class BearerAuth:
    """ASGI middleware: everything but the probes and /metrics needs ``Authorization: Bearer <key>``."""

    OPEN_PATHS = frozenset({"/livez", "/healthz", "/readyz", "/metrics"})

    def __init__(self, app: Any, api_key: SecretStr) -> None:
        self.app = app
        self._key = api_key.get_secret_value().encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] not in self.OPEN_PATHS:
            header = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, token = header.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self._key):
                return await _reject(
                    scope,
                    receive,
                    send,
                    401,
                    "missing or wrong API key: send 'Authorization: Bearer <LLMOPS_API_KEY>'",
                    {"WWW-Authenticate": "Bearer"},
                )
        return await self.app(scope, receive, send)


# JSON nested deeper than this is answered 400 before anything parses it: the parsers recurse once
# per level, and about 1,000 levels (a 2 KB body) overflow Python's stack. No request of these
# services needs more than a handful.
MAX_JSON_DEPTH = 64


def json_depth(body: bytes) -> int:
    """How deep the arrays and objects of the JSON text ``body`` nest, counted without parsing it:
    escaped backslashes and quotes are dropped, so every quote left opens or closes a string, and
    the depth is the running count of the brackets outside strings (vectorized: a 4 MiB body takes
    tens of milliseconds). For a body that is not JSON it bounds how deep a parser gets before the
    error."""
    import numpy as np

    steps = np.zeros(256, dtype=np.int8)  # what each byte adds to the depth
    steps[list(b"[{")], steps[list(b"]}")] = 1, -1
    text = np.frombuffer(body.replace(b"\\\\", b"").replace(b'\\"', b""), dtype=np.uint8)
    inside = np.bitwise_xor.accumulate(text == ord('"'))  # a quote opens or closes a string
    return int(np.cumsum(np.where(inside, np.int8(0), steps[text]), dtype=np.int32).max(initial=0))


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is answered 413, and one whose JSON nests
    deeper than ``max_depth`` 400, before anything parses it.

    A declared Content-Length is checked first; a chunked body is read up to the limit and then
    handed on whole (BentoML reads it whole anyway), so an oversized one never reaches the app.
    Under ``openai_prefix`` (the LLM's /v1 routes) the errors come in OpenAI's shape."""

    def __init__(
        self, app: Any, max_bytes: int, max_depth: int = MAX_JSON_DEPTH, openai_prefix: str | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth
        self.openai_prefix = openai_prefix

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._too_large(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return await self.app(scope, _replay([message], receive), send)
            chunks.append(message)
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self._too_large(scope, receive, send)
            if not message.get("more_body", False):
                break
        if json_depth(b"".join(m.get("body", b"") for m in chunks)) > self.max_depth:
            message = f"the JSON body nests deeper than {self.max_depth} levels of arrays and objects"
            return await self._refuse(scope, receive, send, 400, message, "json_too_deep")
        return await self.app(scope, _replay(chunks, receive), send)

    async def _too_large(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        message = f"request body larger than {self.max_bytes} bytes (the service's LLMOPS_MAX_BODY_BYTES)"
        await self._refuse(scope, receive, send, 413, message, "request_too_large")

    async def _refuse(
        self, scope: dict[str, Any], receive: Any, send: Any, status: int, message: str, code: str
    ) -> None:
        if self.openai_prefix is None or not scope["path"].startswith(self.openai_prefix + "/"):
            return await _reject(scope, receive, send, status, message)
        error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
        await JSONResponse({"error": error}, status_code=status)(scope, receive, send)


def _replay(messages: list[dict[str, Any]], receive: Any) -> Any:
    """A ``receive`` that hands out the already-read ``messages`` first, then the real one."""
    pending = list(messages)

    async def replay() -> dict[str, Any]:
        return pending.pop(0) if pending else await receive()

    return replay


def is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"


class ProxySettings(BaseModel):
    """``LLMOPS_TRUSTED_PROXIES``: the reverse proxies (addresses or networks, comma-separated)
    whose ``X-Forwarded-For`` names the client. Default: none, so the client is the socket peer."""

    trusted_proxies: str = ""

    @field_validator("trusted_proxies")
    @classmethod
    def _addresses(cls, text: str) -> str:
        entries = [e.strip() for e in text.split(",") if e.strip()]
        for entry in entries:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network") from None
        return ",".join(entries)


def trust_proxies(proxies: str) -> None:
    """Tell uvicorn which peers may name the client in ``X-Forwarded-For``. uvicorn trusts
    127.0.0.1 by default, so a proxy on this machine that passes a client's own header through
    would make any client look local; here nothing is trusted unless the setting says so. A
    worker loads its service before uvicorn reads ``FORWARDED_ALLOW_IPS``, so setting it at
    import (from :func:`protect`) takes effect."""
    set_library_setting("FORWARDED_ALLOW_IPS", proxies)


class LoopbackOnly:
    """ASGI middleware for a service without an API key: ``paths`` (``/reload``) answer only
    clients on this machine; anyone else gets 403 and is told to set a key. With no trusted proxy,
    a request that carries a forwarding header came through a proxy, so it is not local either."""

    def __init__(self, app: Any, paths: frozenset[str], trusted_proxies: str = "") -> None:
        self.app = app
        self.paths = paths
        self.trusted_proxies = trusted_proxies

    def _forwarded(self, scope: dict[str, Any]) -> bool:
        if self.trusted_proxies:  # uvicorn already put the forwarded client in scope["client"]
            return False
        return any(name in (b"x-forwarded-for", b"forwarded") for name, _ in scope.get("headers", ()))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] in self.paths:
            client = scope.get("client") or (None, None)
            if not is_loopback(client[0]) or self._forwarded(scope):
                return await _reject(
                    scope,
                    receive,
                    send,
                    403,
                    f"{scope['path']} answers only clients on this machine unless LLMOPS_API_KEY is set",
                )
        return await self.app(scope, receive, send)


class ClientErrorsAsOneLine(logging.Filter):
    """BentoML logs every failed request at ERROR with a traceback, a bad request included.
    This filter (on BentoML's HTTP app logger) turns a client error (a 4xx: a failed validation or
    a BentoML error with a 4xx code) into one WARNING line with the request id that the response's
    X-BentoML-Request-ID header carries; server errors keep their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        status = _client_status(error)
        if status is None:
            return True
        from bentoml._internal.context import trace_context

        request_id = trace_context.request_id
        summary = _summary(error)
        where = record.getMessage().removeprefix("Exception on ")  # "/predict [POST]"
        record.msg = "client error %s on %s (request %s): %s"
        record.args = (status, where, _hex(request_id), summary)
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info, record.exc_text = None, None
        return True


def _summary(error: BaseException) -> str:
    """Where and why, never the input itself (a request may hold data that must not be logged)."""
    if isinstance(error, ValidationError):
        parts = [
            f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
            for e in error.errors(include_input=False, include_url=False)
        ]
        text = "; ".join(parts)
    else:
        text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _client_status(error: BaseException | None) -> int | None:
    if isinstance(error, ValidationError):
        return 400
    code = getattr(getattr(error, "error_code", None), "value", None)
    return code if isinstance(code, int) and 400 <= code < 500 else None


def _hex(request_id: int | None) -> str:
    return "-" if request_id is None else format(request_id, "016x")


def listening_address() -> str | None:
    """The address this BentoML worker serves on: it gets the bound socket as ``--fd N``."""
    if "--fd" not in sys.argv[:-1]:
        return None
    try:
        sock = socket.socket(fileno=int(sys.argv[sys.argv.index("--fd") + 1]))
    except (ValueError, OSError):
        return None
    try:
        return str(sock.getsockname()[0])
    except OSError:
        return None
    finally:
        sock.detach()  # the worker's socket: never close it


def protect(
    service: Any,
    api_key: SecretStr | None,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    loopback_paths: frozenset[str] = frozenset({"/reload"}),
    openapi: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    openai_prefix: str | None = None,
) -> None:
    """Add the middlewares to a BentoML service class (the key check outermost), one-line logs of
    client errors, and a warning when a worker serves a non-loopback address without a key.
    ``openapi`` further edits the OpenAPI document after :func:`fix_openapi`; the body limits answer
    routes under ``openai_prefix`` in OpenAI's error shape."""

    def fix(doc: dict[str, Any]) -> dict[str, Any]:
        doc = fix_openapi(doc, api_key=api_key is not None, loopback_paths=loopback_paths)
        return openapi(doc) if openapi else doc

    service.add_asgi_middleware(OpenAPIFix, fix=fix)
    proxies = settings_from_env(ProxySettings).trusted_proxies
    trust_proxies(proxies)
    if api_key is not None:
        service.add_asgi_middleware(BearerAuth, api_key=api_key)
    else:
        service.add_asgi_middleware(LoopbackOnly, paths=loopback_paths, trusted_proxies=proxies)
        host = listening_address()
        if host is not None and not is_loopback(host):
            logger.warning(
                "serving on %s without LLMOPS_API_KEY: anyone who can reach this address can call "
                "the service; set LLMOPS_API_KEY or serve with --host 127.0.0.1",
                host,
            )
    service.add_asgi_middleware(BodyLimit, max_bytes=max_body_bytes, openai_prefix=openai_prefix)
    service.add_asgi_middleware(JSONOnly)
    http_log = logging.getLogger("bentoml._internal.server.http_app")
    if not any(isinstance(f, ClientErrorsAsOneLine) for f in http_log.filters):
        http_log.addFilter(ClientErrorsAsOneLine())


class BatchResults(list):
    """What a ``batchable`` API returns so that one request of a batch can fail alone: one entry
    per input item, and for each item of a failed request the exception to answer it with.

    BentoML splits a batch's result per request and raises, for that request only, an exception
    it finds in its place; the container below puts the request's exception there."""


def _register_batch_results() -> None:
    from bentoml._internal.runner.container import DataContainerRegistry, DefaultContainer

    class BatchResultsContainer(DefaultContainer):
        @classmethod
        def batch_to_batches(cls, batch: list[Any], indices: Sequence[int], batch_dim: int = 0) -> list[Any]:
            parts = []
            for lo, hi in itertools.pairwise(indices):
                part = batch[lo:hi]
                failed = next((item for item in part if isinstance(item, Exception)), None)
                parts.append(failed if failed is not None else list(part))
            return parts

    DataContainerRegistry.register_container(BatchResults, BatchResults, BatchResultsContainer)


_register_batch_results()


def request_error(loc: tuple[str | int, ...], message: str, kind: str = "value_error") -> ValidationError:
    """A 400 for one request, shaped as BentoML answers every validation error:
    ``{"error": ..., "detail": [{"loc": loc, "msg": message, "type": kind}]}``."""
    from pydantic_core import PydanticCustomError

    error = PydanticCustomError(kind, "{reason}", {"reason": message})
    return ValidationError.from_exception_data("request", [{"type": error, "loc": loc, "input": None}])
