"""What ``llmops ui`` is started with: its settings, the playground's services, the golden sets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, SecretStr

from llmops.errors import ParameterError
from llmops.settings import settings_from_env
from llmops.ui.auth import Auth


class UiSettings(BaseModel):
    """``LLMOPS_API_KEY``: the key every service and the UI's writes take; ``LLMOPS_UI_SERVICES``:
    the playground's services as ``NAME=URL,NAME=URL`` (``llmops ui --service`` adds to them)."""

    api_key: SecretStr | None = None
    ui_services: str = ""


def ui_settings() -> UiSettings:
    return settings_from_env(UiSettings)


@dataclass(frozen=True)
class Service:
    name: str
    url: str


def parse_services(specs: list[str], source: str = "--service") -> list[Service]:
    """``NAME=URL`` pairs (``--service`` or ``LLMOPS_UI_SERVICES``, comma-separated); an error names
    ``source``, the option or setting the pair came from."""
    found = []
    for spec in specs:
        name, sep, url = spec.partition("=")
        if not sep or not name.strip() or not url.strip().startswith(("http://", "https://")):
            raise ParameterError(f"{source}: {spec!r} is not NAME=http(s)://HOST:PORT")
        found.append(Service(name.strip(), url.strip().rstrip("/")))
    return found


def unique_services(services: list[Service]) -> list[Service]:
    """The playground asks a service by its name: two services of one name would hide one."""
    names = [s.name for s in services]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ParameterError(f"--service: {', '.join(twice)} given twice (with LLMOPS_UI_SERVICES)")
    return services


def golden_files(project: Path) -> list[Path]:
    """The project's golden sets: ``evals/*golden*.yaml``."""
    return sorted((project / "evals").glob("*golden*.yaml"))


@dataclass
class UiConfig:
    auth: Auth
    services: list[Service] = field(default_factory=list)
    golden: list[Path] = field(default_factory=list)  # the golden sets the UI curates
    per_page: int = 25
