"""What the UI changes or asks: promote and rollback (the key, compare-and-set on the alias the
page showed), golden-set decisions, and the playground's questions and ratings to the services.

Every write asks :meth:`llmops.ui.auth.Auth.refusal` first. A form posted by htmx gets back a
line of HTML for the page (and ``HX-Refresh`` when the page shows what changed); a plain form post
is sent back to the page it came from.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from html import escape
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse

from llmops.errors import LlmopsError, ParameterError
from llmops.registry import CHAMPION, AliasConflict
from llmops.ui.config import Service
from llmops.ui.runs import NotFound

MAX_QUESTION_CHARS = 2000


def _warm_up(done: threading.Event) -> None:
    """Import what the pages need (the Metaflow client, pandas for a monitor's window, numpy) and
    read the registry's listing while the server already answers its probe: seconds not paid
    before it starts."""
    try:
        import pandas  # noqa: F401

        from llmops.ui.models import all_versions
        from llmops.ui.runs import _flows

        _flows()
        all_versions()  # the registry's listing, read once (llmops.ui.models)
    finally:
        done.set()


class AfterWarmUp:
    """ASGI middleware: a page waits until the warm-up's imports are done. A module half imported
    by the warm-up thread would otherwise be seen half made by a request thread (BentoML looks up
    numpy in ``sys.modules`` without importing it); ``/healthz`` and ``/static`` do not wait."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] != "/healthz"
            and not scope["path"].startswith("/static/")
        ):
            done: threading.Event = scope["app"].state.warm
            if not done.is_set():
                import anyio

                await anyio.to_thread.run_sync(done.wait)
        await self.app(scope, receive, send)


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    """One HTTP client for the playground's calls to the services, for the app's life; the imports
    of the pages are warmed up in the background (pages wait for them: :class:`AfterWarmUp`)."""
    import httpx

    app.state.warm = threading.Event()
    threading.Thread(target=_warm_up, args=(app.state.warm,), name="llmops-ui-warm-up", daemon=True).start()
    async with httpx.AsyncClient() as client:
        app.state.http = client
        yield


def _refused(request: Request) -> Response | None:
    why = request.app.state.config.auth.refusal(request)
    if why is None:
        return None
    status, message = why
    if request.headers.get("hx-request"):
        return HTMLResponse(f'<span class="error">{escape(message)}</span>', status_code=status)
    return JSONResponse({"error": message}, status_code=status)


def _done(request: Request, message: str, status: int = 200, refresh: bool = True) -> Response:
    if request.headers.get("hx-request"):
        headers = {"HX-Refresh": "true"} if refresh and status == 200 else {}
        kind = "ok" if status == 200 else "error"
        return HTMLResponse(
            f'<span class="{kind}">{escape(message)}</span>', status_code=status, headers=headers
        )
    if status != 200:
        return JSONResponse({"error": message}, status_code=status)
    back = request.headers.get("referer") or "/models"
    return RedirectResponse(back, status_code=303)


def _field(form: Any, key: str, default: str | None = None) -> str:
    value = form.get(key, default)
    if value is None or not str(value).strip():
        raise ParameterError(f"{key}: required")
    return str(value).strip()


async def promote(request: Request) -> Response:
    from llmops.ui.models import promote as move

    if (refused := _refused(request)) is not None:
        return refused
    form = await request.form()
    name, version = request.path_params["name"], _field(form, "version")
    alias = _field(form, "alias", CHAMPION)
    expected = form.get("expected")  # what the page showed: the move happens only if it still points there
    try:
        previous = move(name, version, alias, None if expected is None else str(expected))
    except AliasConflict as exc:
        return _done(request, str(exc), 409)
    except LlmopsError as exc:
        return _done(request, str(exc), 400)
    return _done(request, f"{name}@{alias}: {previous or '(unset)'} -> {version}")


async def rollback(request: Request) -> Response:
    from llmops.ui.models import rollback as back

    if (refused := _refused(request)) is not None:
        return refused
    form = await request.form()
    name, alias = request.path_params["name"], _field(form, "alias", CHAMPION)
    try:
        target = back(name, alias)
    except LlmopsError as exc:
        return _done(request, str(exc), 409 if isinstance(exc, AliasConflict) else 400)
    return _done(request, f"{name}@{alias} rolled back to {target}")


async def golden_decide(request: Request) -> Response:
    from llmops.ui import golden as reads

    if (refused := _refused(request)) is not None:
        return refused
    form = await request.form()
    chosen = reads.resolve(_field(form, "golden"), request.app.state.config.golden)
    ids = [str(i) for i in form.getlist("id") if str(i).strip()]
    if not ids:
        return _done(request, "id: choose a candidate", 400)
    try:
        note = reads.decide(
            chosen,
            _field(form, "release", "rag"),
            _field(form, "decision"),
            ids,
            str(form.get("reference") or "").strip() or None,
        )
    except LlmopsError as exc:
        return _done(request, str(exc), 400)
    return _done(request, note)


def _service(request: Request, name: Any) -> Service:
    for service in request.app.state.config.services:
        if service.name == name:
            return service
    names = [s.name for s in request.app.state.config.services]
    raise NotFound(
        f"service {name!r} is not one the UI was started with ({names}; llmops ui --service NAME=URL)"
    )


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise ParameterError("the body must be JSON") from None
    if not isinstance(body, dict):
        raise ParameterError("the body must be a JSON object")
    return body


def _service_key(request: Request) -> str | None:
    """The key goes on to a service only for a user who gave it to the UI."""
    auth = request.app.state.config.auth
    return auth.key if auth.can_write(request) else None


async def ask(request: Request) -> Response:
    from llmops.ui.playground import ask as stream

    body = await _json(request)
    service = _service(request, body.get("service"))
    question = str(body.get("question") or "").strip()
    if not question or len(question) > MAX_QUESTION_CHARS:
        raise ParameterError(f"question: give 1 to {MAX_QUESTION_CHARS} characters")
    k = body.get("k")
    if k is not None and (not isinstance(k, int) or not 1 <= k <= 50):
        raise ParameterError("k: must be a whole number from 1 to 50")
    events = stream(request.app.state.http, service, question, _service_key(request), k)
    return StreamingResponse(events, media_type="application/x-ndjson")


async def feedback(request: Request) -> Response:
    from llmops.ui.playground import feedback as rate

    body = await _json(request)
    service = _service(request, body.get("service"))
    rating = body.get("rating")
    if rating not in (1, -1) or isinstance(rating, bool):
        raise ParameterError("rating: 1 or -1")
    request_id = str(body.get("request_id") or "")
    if not request_id:
        raise ParameterError("request_id: required")
    correction = body.get("correction") if isinstance(body.get("correction"), str) else None
    status, answer = await rate(
        request.app.state.http, service, request_id, rating, _service_key(request), correction
    )
    return JSONResponse(answer, status_code=status)
