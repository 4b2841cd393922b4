"""The OpenAPI document a service serves at ``/docs.json``, made to say what it answers.

BentoML generates it from the APIs' types, but declares an error's ``detail`` as a string (it is
a list of field errors), leaves a body with required fields optional, drops ``null`` from fields
that default to it, and cannot know the statuses the ASGI middlewares of ``llmops.serving`` answer.
Clients, client generators and the schemathesis fuzz of the test suite read this document.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from starlette.responses import JSONResponse

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Error",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "title": "Message"},
        "detail": {
            "type": "array",
            "title": "Error Detail",
            "items": {  # one per invalid field: where (e.g. ["records", 0, "mean radius"]) and why
                "type": "object",
                "required": ["loc", "msg", "type"],
                "properties": {
                    "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
}
# a response whose body is an Error
ERROR_RESPONSE = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
# what the middlewares and BentoML answer besides each API's own 200/400/404/500
EXTRA_RESPONSES = {
    "413": "Request body too large (LLMOPS_MAX_BODY_BYTES)",
    "415": "Not JSON",
    "503": "Overloaded: the request waited longer than the service allows",
}


def fix_openapi(doc: dict[str, Any], *, api_key: bool, loopback_paths: frozenset[str]) -> dict[str, Any]:
    """Make BentoML's generated OpenAPI document say what the service answers: the error body's
    ``detail`` is a list of field errors, a body with required fields is itself required, a field
    that defaults to null is nullable, and the middlewares' 401/403/413/415 (and 503) are listed."""
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("InvalidArgument", "NotFound", "InternalServerError"):
        if name in schemas:
            schemas[name] = {
                **ERROR_SCHEMA,
                "title": name,
                "description": schemas[name].get("description", ""),
            }
    schemas["Error"] = ERROR_SCHEMA
    for schema in schemas.values():
        _mark_nullable(schema)
    for path, operations in doc.get("paths", {}).items():
        operation = operations.get("post")
        if operation is None:
            continue
        body = (
            operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
        )
        _mark_nullable(body)
        if body.get("required"):
            operation["requestBody"]["required"] = True
        extra = dict(EXTRA_RESPONSES)
        if api_key:
            extra["401"] = "Missing or wrong API key (Authorization: Bearer <LLMOPS_API_KEY>)"
        elif path in loopback_paths:
            extra["403"] = "Only clients on this machine may call this without LLMOPS_API_KEY"
        for status, description in extra.items():
            operation["responses"].setdefault(status, {"description": description, **ERROR_RESPONSE})
        for response in operation["responses"].values():
            _mark_nullable(response.get("content", {}).get("application/json", {}).get("schema", {}))
    return doc


def _mark_nullable(schema: dict[str, Any]) -> None:
    """BentoML turns ``x: str | None = None`` into ``{"type": "string", "default": null}``."""
    for prop in schema.get("properties", {}).values():
        if prop.get("default", ...) is None and "type" in prop:
            prop["nullable"] = True


class OpenAPIFix:
    """ASGI middleware: ``GET /docs.json`` answered with :func:`fix_openapi` applied, then the
    service's own ``patch`` (e.g. routes BentoML does not know of)."""

    def __init__(self, app: Any, fix: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.app = app
        self.fix = fix

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or not scope["path"].endswith("/docs.json"):
            return await self.app(scope, receive, send)
        start: dict[str, Any] = {}
        body = bytearray()

        async def capture(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            else:
                body.extend(message.get("body", b""))

        await self.app(scope, receive, capture)
        if start.get("status") != 200:
            await send(start)
            return await send({"type": "http.response.body", "body": bytes(body)})
        await JSONResponse(self.fix(json.loads(body)))(scope, receive, send)
