"""What every service shares: settings from ``LLMOPS_*`` variables, the optional bearer API key,
and JSON-only POSTs (ASGI middlewares, added with ``Service.add_asgi_middleware``)."""

from __future__ import annotations

import hmac
import os
from typing import Any, TypeVar

from pydantic import BaseModel, SecretStr, ValidationError
from starlette.responses import JSONResponse

S = TypeVar("S", bound=BaseModel)


def settings_from_env(cls: type[S], env: dict[str, str] | None = None) -> S:
    """``cls`` with each field read from ``LLMOPS_<FIELD>``; errors name the variable."""
    env = dict(os.environ if env is None else env)
    names = {field: f"LLMOPS_{field.upper()}" for field in cls.model_fields}
    try:
        return cls.model_validate({f: env[var] for f, var in names.items() if env.get(var)})
    except ValidationError as exc:
        problems = "; ".join(f"{names[str(e['loc'][0])]}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"bad service setting: {problems}") from None


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


def protect(service: Any, api_key: SecretStr | None) -> None:
    """Add the middlewares to a BentoML service class: the key check first (outermost)."""
    if api_key is not None:
        service.add_asgi_middleware(BearerAuth, api_key=api_key)
    service.add_asgi_middleware(JSONOnly)
