"""The playground: ask a running RAG or LLM service, stream what it answers, rate the answer.

The UI is a client of the services like ``curl`` is: it holds no model. ``llmops ui --service
NAME=URL`` names each one (``champion=http://127.0.0.1:3000``); a RAG service (``/info`` names an
index) answers ``POST /query`` with its sources, an LLM service streams ``/v1/chat/completions``
token by token. Each answer streams to the browser as lines of JSON (``application/x-ndjson``):

    {"type": "meta", "service": ..., "release": ...}
    {"type": "sources", "sources": [{"number", "path", "chunk", "score", "text"}]}   RAG only
    {"type": "token", "text": ...}                  an LLM: one per chunk; RAG: the whole answer
    {"type": "done", "request_id": ...}             the id that POST /feedback rates
    {"type": "error", "status": ..., "error": ...}  the service's own status and message
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from llmops.ui.config import Service

TIMEOUT_S = 120.0


def _headers(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _line(event: dict[str, Any]) -> bytes:
    return (json.dumps(event) + "\n").encode()


async def info(client: httpx.AsyncClient, service: Service, key: str | None) -> dict[str, Any]:
    """What the service serves: ``{"kind": "rag"|"llm", "release": ..., ...}``, or an ``error``."""
    try:
        reply = await client.post(f"{service.url}/info", json={}, headers=_headers(key), timeout=10)
    except httpx.HTTPError as exc:
        return {"kind": None, "error": f"{service.url} does not answer: {type(exc).__name__}"}
    if reply.status_code != 200:
        return {"kind": None, "error": f"{service.url}/info answered {reply.status_code}: {reply.text[:200]}"}
    body = reply.json()
    if "versions" in body:  # services/rag.py
        return {"kind": "rag", "release": f"{body.get('release')}:{body.get('version')}", **body}
    return {"kind": "llm", "release": body.get("release") or body.get("model"), **body}


async def ask(
    client: httpx.AsyncClient, service: Service, question: str, key: str | None, k: int | None = None
) -> AsyncIterator[bytes]:
    """The service's answer to ``question`` as NDJSON events (see the module docstring)."""
    about = await info(client, service, key)
    if about.get("kind") is None:
        yield _line({"type": "error", "status": 502, "error": about["error"]})
        return
    yield _line({"type": "meta", "service": service.name, "kind": about["kind"], "release": about["release"]})
    if about["kind"] == "rag":
        async for event in _ask_rag(client, service, question, key, k):
            yield event
    else:
        async for event in _ask_llm(client, service, about, question, key):
            yield event


async def _ask_rag(client, service, question, key, k) -> AsyncIterator[bytes]:
    body = {"question": question, **({"k": k} if k else {})}
    try:
        reply = await client.post(f"{service.url}/query", json=body, headers=_headers(key), timeout=TIMEOUT_S)
    except httpx.HTTPError as exc:
        yield _line({"type": "error", "status": 504, "error": f"{service.url}/query: {type(exc).__name__}"})
        return
    if reply.status_code != 200:
        yield _line({"type": "error", "status": reply.status_code, "error": reply.text[:500]})
        return
    answer = reply.json()
    yield _line({"type": "sources", "sources": answer["sources"], "versions": answer["versions"]})
    yield _line({"type": "token", "text": answer["answer"]})
    yield _line({"type": "done", "request_id": answer["request_id"]})


async def _ask_llm(client, service, about, question, key) -> AsyncIterator[bytes]:
    body = {
        "model": about.get("model"),
        "messages": [{"role": "user", "content": question}],
        "max_tokens": min(int(about.get("max_tokens") or 128), 256),
        "stream": True,
    }
    url, request_id = f"{service.url}/v1/chat/completions", None
    try:
        async with client.stream("POST", url, json=body, headers=_headers(key), timeout=TIMEOUT_S) as reply:
            if reply.status_code != 200:
                text = (await reply.aread()).decode(errors="replace")
                yield _line({"type": "error", "status": reply.status_code, "error": text[:500]})
                return
            async for line in reply.aiter_lines():
                data = line.removeprefix("data:").strip()
                if not line.startswith("data:") or data == "[DONE]":
                    continue
                chunk = json.loads(data)
                request_id = chunk.get("id", request_id)
                for choice in chunk.get("choices", []):
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield _line({"type": "token", "text": text})
    except httpx.HTTPError as exc:
        yield _line({"type": "error", "status": 504, "error": f"{url}: {type(exc).__name__}"})
        return
    yield _line({"type": "done", "request_id": request_id})


async def feedback(
    client: httpx.AsyncClient, service: Service, request_id: str, rating: int, key: str | None,
    correction: str | None = None,
) -> tuple[int, dict[str, Any]]:  # fmt: skip
    """``POST /feedback`` to the service that answered; its status and body as they came."""
    body = {"request_id": request_id, "rating": rating, **({"correction": correction} if correction else {})}
    try:
        reply = await client.post(f"{service.url}/feedback", json=body, headers=_headers(key), timeout=30)
    except httpx.HTTPError as exc:
        return 502, {"error": f"{service.url}/feedback: {type(exc).__name__}"}
    try:
        return reply.status_code, reply.json()
    except ValueError:
        return reply.status_code, {"error": reply.text[:500]}
