"""``llmops ui [--host H] [--port P] [--service NAME=URL]... [--golden FILE]...``: serve the UI.

One process, no other service: uvicorn serves the Starlette app on 127.0.0.1 unless told
otherwise, and says so when another address can reach it, as the services do.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from llmops.errors import ParameterError

DEFAULT_PORT = 8080
LOOPBACK = ("127.0.0.1", "::1", "localhost")
logger = logging.getLogger("llmops.ui")


def build_config(services: list[str], golden: list[str] | None):
    from llmops.ui.auth import Auth
    from llmops.ui.config import UiConfig, golden_files, parse_services, ui_settings, unique_services

    settings = ui_settings()
    from_env = [s for s in settings.ui_services.split(",") if s.strip()]
    parsed = unique_services(parse_services(from_env, "LLMOPS_UI_SERVICES") + parse_services(services))
    files = [Path(g).resolve() for g in golden] if golden else golden_files(Path.cwd())
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ParameterError(f"--golden: no such file: {', '.join(missing)}")
    return UiConfig(auth=Auth(settings.api_key), services=parsed, golden=files)


def warn_if_reachable(host: str, key_set: bool) -> None:
    if host in LOOPBACK:  # the default: no need to import the services' check
        return
    from llmops.serving import is_loopback

    if is_loopback(host):
        return
    if key_set:
        logger.warning(
            "serving the UI on %s: anyone who can reach this address can read the registry, runs and "
            "logs (writes need LLMOPS_API_KEY); serve with --host 127.0.0.1 to keep it on this machine",
            host,
        )
    else:
        logger.warning(
            "serving the UI on %s without LLMOPS_API_KEY: anyone who can reach this address can read the "
            "registry, runs and logs; set LLMOPS_API_KEY or serve with --host 127.0.0.1",
            host,
        )


def serve(host: str, port: int, services: list[str], golden: list[str] | None) -> None:
    import uvicorn

    from llmops.ui.app import create_app

    if not 0 < port < 65536:
        raise ParameterError(f"--port: {port} is not a port number (1-65535)")
    config = build_config(services, golden)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    warn_if_reachable(host, config.auth.enabled)
    mode = "writes with LLMOPS_API_KEY" if config.auth.enabled else "read-only (no LLMOPS_API_KEY)"
    where = f"[{host}]" if ":" in host else host
    print(f"llmops ui: http://{where}:{port}/ ({mode})", file=sys.stderr, flush=True)
    uvicorn.run(create_app(config), host=host, port=port, log_level="warning", access_log=False)


def ui_command(args: argparse.Namespace) -> None:
    serve(args.host, args.port, args.service or [], args.golden)


def add_ui_command(groups: argparse._SubParsersAction) -> None:
    p = groups.add_parser(
        "ui",
        help="a web UI over the registry, gate decisions, monitors, golden sets and a playground",
        description="Serves the UI (docs/ui.md) on HOST:PORT. Read-only unless LLMOPS_API_KEY is set; "
        "then promote, rollback and golden-set decisions need that key (log in on the page).",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default: %(default)s)")
    p.add_argument(
        "--service",
        action="append",
        metavar="NAME=URL",
        help="a running RAG or LLM service for the playground (repeatable; also $LLMOPS_UI_SERVICES)",
    )
    p.add_argument(
        "--golden",
        action="append",
        metavar="FILE",
        help="a golden set to curate (repeatable; default: evals/*golden*.yaml)",
    )
    p.set_defaults(func=ui_command)
