"""The ``llmops ui`` web app: server-rendered pages (Jinja2 on Starlette, htmx for the forms).
A page is a plain function that Starlette runs in its thread pool: its reads never hold up the event
loop, where the playground streams.

    /models, /models/NAME, /models/NAME/VERSION     registry: versions, aliases, gate, lineage
    /gates, /gates/NAME?status=failed&page=2        every gate decision of a name, rule by rule
    /runs/FLOW/RUN_ID                               one run: its gate decision and its cards
    /cards/FLOW/RUN/STEP/TASK?i=0                   a Metaflow card inside the UI
    /monitoring, /monitoring/NAME                   monitor verdicts over time, with charts
    /golden?golden=rag_golden&release=rag           golden versions, diffs, candidates
    /playground                                     ask the running services, side by side

Writes (promote, rollback, golden decisions) are in ``llmops.ui.actions``. Every page reads the
project's own modules at request time; the app holds no state but its settings.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from llmops.errors import LlmopsError, ParameterError
from llmops.ui.auth import COOKIE
from llmops.ui.config import UiConfig
from llmops.ui.runs import NotFound

HERE = Path(__file__).parent
logger = logging.getLogger("llmops.ui")


templates = Jinja2Templates(directory=str(HERE / "templates"))


def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    config: UiConfig = request.app.state.config
    context |= {"auth": config.auth, "can_write": config.auth.can_write(request), "path": request.url.path}
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def _int(request: Request, key: str, default: int = 1) -> int:
    try:
        return max(1, int(request.query_params.get(key, default)))
    except ValueError:
        raise ParameterError(f"{key}: {request.query_params[key]!r} is not a number") from None


def _card_index(request: Request) -> int:
    raw = request.query_params.get("i", "0")
    if not raw.isdigit():
        raise NotFound(f"card #{raw!r} of {request.path_params['task']!r}: give ?i=0, 1, ...")
    return int(raw)


# ---- models ------------------------------------------------------------------------------------


def models(request: Request) -> HTMLResponse:
    from llmops.ui.models import summaries

    return page(request, "models.html", summaries=summaries())


def model(request: Request) -> HTMLResponse:
    from llmops.ui.models import model_versions

    name = request.path_params["name"]
    summary, pages = model_versions(name, _int(request, "page"))
    return page(request, "model.html", model=summary, page_no=_int(request, "page"), pages=pages)


def version(request: Request) -> HTMLResponse:
    from llmops.ui.models import version_detail

    row, found, decision = version_detail(request.path_params["name"], request.path_params["version"])
    return page(request, "version.html", row=row, found=found, decision=decision)


# ---- gate decisions ----------------------------------------------------------------------------


def gates(request: Request) -> HTMLResponse:
    from llmops.ui.runs import gated_names

    return page(request, "gates.html", names=gated_names())


def gate_history(request: Request) -> HTMLResponse:
    from llmops.ui.runs import gate_page

    status = request.query_params.get("status") or None
    if status not in (None, "passed", "failed"):
        raise ParameterError(f"status: {status!r} is not passed or failed")
    name = request.path_params["name"]
    found = gate_page(name, status, _int(request, "page"), request.app.state.config.per_page)
    if not found.total and not status:
        raise NotFound(f"model {name!r} has no gated run (a run of a flow with @gate tags model:{name})")
    return page(request, "gate_history.html", history=found)


def run_page(request: Request) -> HTMLResponse:
    from llmops.ui.runs import gate_decision, run, run_cards

    found = run(f"{request.path_params['flow']}/{request.path_params['run_id']}")
    cards = run_cards(found)
    gate_card = next((c for c in cards if c.type == "llmops_gate"), None)
    return page(
        request, "run.html", run=found, decision=gate_decision(found), cards=cards, gate_card=gate_card
    )


def card(request: Request) -> HTMLResponse:
    from llmops.ui.runs import card_html

    task, index = request.path_params["task"], _card_index(request)
    title, _ = card_html(task, index)
    return page(request, "card.html", task=task, title=title, index=index)


def card_raw(request: Request) -> HTMLResponse:
    """The card's own HTML (its scripts inline), shown in a sandboxed frame of the card page."""
    from llmops.ui.runs import card_html

    _, html = card_html(request.path_params["task"], _card_index(request))
    return HTMLResponse(html, headers={"Content-Security-Policy": "sandbox allow-scripts"})


# ---- monitoring --------------------------------------------------------------------------------


def monitoring(request: Request) -> HTMLResponse:
    from llmops.ui.runs import monitored_names

    return page(request, "monitoring.html", names=monitored_names())


def monitor_history(request: Request) -> HTMLResponse:
    from llmops.ui.monitoring import monitor_history as read

    name = request.path_params["name"]
    history = read(name)
    if not history.runs:
        raise NotFound(f"model {name!r} has no finished monitor run (python flows/monitor_*.py run)")
    return page(request, "monitor_history.html", history=history, charts=history.charts())


# ---- golden sets -------------------------------------------------------------------------------


def golden(request: Request) -> HTMLResponse:
    from llmops.ui import golden as reads

    config: UiConfig = request.app.state.config
    if not config.golden:
        return page(request, "golden.html", golden=None, files=[])
    chosen = reads.resolve(request.query_params.get("golden") or config.golden[0].name, config.golden)
    release = request.query_params.get("release") or "rag"
    versions = reads.versions(chosen)
    old = request.query_params.get("from") or (versions[1].version if len(versions) > 1 else None)
    lines = reads.diff(chosen, old, request.query_params.get("to") or "current") if old else []
    return page(
        request,
        "golden.html",
        golden=chosen,
        files=config.golden,
        release=release,
        versions=versions,
        diff_from=old,
        diff=lines,
        report=reads.candidates(chosen, release, request.query_params.get("since")),
        history=reads.history(chosen)[:20],
    )


# ---- playground and the rest -------------------------------------------------------------------


def playground(request: Request) -> HTMLResponse:
    return page(request, "playground.html", services=request.app.state.config.services)


async def login(request: Request) -> Response:
    config: UiConfig = request.app.state.config
    target = request.query_params.get("next", "/models")
    target = target if target.startswith("/") and not target.startswith(("//", "/\\")) else "/models"
    if request.method == "GET":
        return page(request, "login.html", next=target, error=None)
    form = await request.form()
    if not config.auth.enabled:
        return page(
            request, "login.html", 403, next=target, error="no LLMOPS_API_KEY is set: the UI is read-only"
        )
    if not config.auth.check_key(str(form.get("key", ""))):
        return page(request, "login.html", 401, next=target, error="wrong key")
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, config.auth.session_token(), httponly=True, samesite="strict")
    return response


async def logout(request: Request) -> Response:
    response = RedirectResponse("/models", status_code=303)
    response.delete_cookie(COOKIE)
    return response


def healthz(request: Request) -> Response:
    return Response("ok", media_type="text/plain")


def _wants_json(request: Request) -> bool:
    return request.headers.get("content-type", "").startswith("application/json")


async def not_found(request: Request, exc: Exception) -> Response:
    what = str(exc) if isinstance(exc, NotFound) else f"no page at {request.url.path}"
    if _wants_json(request):
        return JSONResponse({"error": what}, status_code=404)
    return page(request, "error.html", 404, title="Not found", message=what)


async def bad_request(request: Request, exc: Exception) -> Response:
    if _wants_json(request):
        return JSONResponse({"error": str(exc)}, status_code=400)
    return page(request, "error.html", 400, title="Cannot do that", message=str(exc))


async def server_error(request: Request, exc: Exception) -> HTMLResponse:
    logger.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
    message = f"{type(exc).__name__} while reading {request.url.path}; the UI's log has the details"
    return page(request, "error.html", 500, title="Something went wrong", message=message)


async def http_error(request: Request, exc: HTTPException) -> HTMLResponse:
    if exc.status_code == 404:
        return await not_found(request, exc)
    return page(
        request, "error.html", exc.status_code, title=f"HTTP {exc.status_code}", message=str(exc.detail)
    )


def create_app(config: UiConfig) -> Starlette:
    from llmops.ui import actions

    routes = [
        Route("/", lambda request: RedirectResponse("/models", status_code=307)),
        Route("/healthz", healthz),
        Route("/models", models),
        Route("/models/{name}", model),
        Route("/models/{name}/promote", actions.promote, methods=["POST"]),
        Route("/models/{name}/rollback", actions.rollback, methods=["POST"]),
        Route("/models/{name}/{version}", version),
        Route("/gates", gates),
        Route("/gates/{name}", gate_history),
        Route("/runs/{flow}/{run_id}", run_page),
        Route("/cards/{task:path}/raw", card_raw),
        Route("/cards/{task:path}", card),
        Route("/monitoring", monitoring),
        Route("/monitoring/{name}", monitor_history),
        Route("/golden", golden),
        Route("/golden/decide", actions.golden_decide, methods=["POST"]),
        Route("/playground", playground),
        Route("/playground/ask", actions.ask, methods=["POST"]),
        Route("/playground/feedback", actions.feedback, methods=["POST"]),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    handlers = {
        NotFound: not_found,
        LlmopsError: bad_request,
        HTTPException: http_error,
        Exception: server_error,
    }
    middleware = [Middleware(actions.AfterWarmUp)]
    app = Starlette(
        routes=routes, exception_handlers=handlers, middleware=middleware, lifespan=actions.lifespan
    )
    app.state.config = config
    return app
