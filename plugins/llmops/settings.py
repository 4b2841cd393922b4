"""Every setting llmops takes from the environment is read here, and nowhere else.

Settings are environment variables; docs/settings.md lists each with its one default. There are
two ways to read one:

    value("BENTOML_HOME")                  one variable, as text (an empty variable counts as unset):
                                           the folders (``llmops.paths``), other tools' variables,
                                           the test-only fault points
    settings_from_env(Settings)            a pydantic model whose field ``x`` is read from ``LLMOPS_X``:
                                           each service's settings and the core's groups below; a
                                           field's default is the setting's one default

Folder settings are decided in ``llmops.paths`` (through :func:`value`); a pipeline keeps its
own group beside the code that uses it (``llmops.rag.generators.EndpointSettings``,
``llmops.llm.backends.BatchSettings``), read through :func:`settings_from_env`.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TypeVar

from pydantic import BaseModel, Field, ValidationError

from llmops.errors import LlmopsError

S = TypeVar("S", bound=BaseModel)
logger = logging.getLogger("bentoml.llmops.settings")

# Settings renamed to the one scheme (LLMOPS_<SERVICE>_RELEASE / _VERSION): the old names still
# work, with a warning, until the next minor release.
RENAMED_SETTINGS = {
    "LLMOPS_MODEL": "LLMOPS_CLASSIFIER_RELEASE",
    "LLMOPS_MODEL_VERSION": "LLMOPS_CLASSIFIER_VERSION",
    "LLMOPS_RAG_RELEASE_VERSION": "LLMOPS_RAG_VERSION",
}


class SettingsError(LlmopsError, ValueError):
    """A setting that cannot be used; names the variable."""


def value(name: str) -> str | None:
    """The variable ``name`` at call time (a test or a flow step that sets it sees its own value);
    ``None`` when unset or empty."""
    return os.environ.get(name) or None


def first_value(*names: str) -> str | None:
    """The first of ``names`` that is set: a project setting before the other tool's own
    (``LLMOPS_GENERATOR_API_KEY``, then ``OPENAI_API_KEY``)."""
    return next((found for found in map(value, names) if found is not None), None)


def child_environment(settings: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment with ``settings`` over it: what a child process (a server, a
    flow) is started with."""
    return {**os.environ, **(settings or {})}


def set_library_setting(name: str, setting: str) -> None:
    """Hand another library a value it reads from its own variable, over what the variable held:
    uvicorn's ``FORWARDED_ALLOW_IPS`` is decided by ``LLMOPS_TRUSTED_PROXIES``."""
    os.environ[name] = setting


def set_library_default(name: str, default: str) -> None:
    """Set another library's variable unless the user set it: the library reads it when it is
    imported (``HF_HUB_OFFLINE``, ``RAGAS_DO_NOT_TRACK``), so it must be in the environment."""
    os.environ.setdefault(name, default)


def _bento_arguments() -> dict[str, str]:
    """A bento's arguments (``args:`` in its bentofile, ``--arg`` of bentoml build/serve) as
    ``LLMOPS_*`` variables; empty outside a bento."""
    # A service imports bentoml before it reads its settings; any other process (a flow, the
    # CLI) has no bento arguments and should not pay bentoml's import for asking.
    bentoml = sys.modules.get("bentoml")
    if bentoml is None:
        return {}
    try:
        arguments = vars(bentoml.use_arguments())
    except Exception:  # no arguments were given
        return {}
    return {f"LLMOPS_{key.upper()}": str(arg) for key, arg in arguments.items() if arg is not None}


def settings_from_env(cls: type[S], env: dict[str, str] | None = None) -> S:
    """``cls`` with each field ``x`` read from ``LLMOPS_X``. Without ``env``: the process
    environment over the bento's arguments (an argument is a default a variable overrides). An
    empty variable counts as unset; a renamed variable (:data:`RENAMED_SETTINGS`) still works and
    logs a warning. Errors name the variable."""
    if env is None:
        env = _bento_arguments() | {k: v for k, v in os.environ.items() if v}
    env = dict(env)
    for old, new in RENAMED_SETTINGS.items():
        if env.get(old) and not env.get(new):
            logger.warning("%s is deprecated: set %s instead", old, new)
            env[new] = env[old]
    names = {field: f"LLMOPS_{field.upper()}" for field in cls.model_fields}
    try:
        return cls.model_validate({f: env[var] for f, var in names.items() if env.get(var)})
    except ValidationError as exc:

        def where(loc: tuple) -> str:  # a model-level check has no field: name the group
            return names.get(str(loc[0]), str(loc[0])) if loc else cls.__name__

        problems = "; ".join(f"{where(e['loc'])}: {e['msg']}" for e in exc.errors())
        raise SettingsError(f"bad service setting: {problems}") from None


class InferenceLogSettings(BaseModel):
    """How and how often the inference log writes (``llmops.inference_log``)."""

    inference_log_flush_s: float = Field(1.0, gt=0)  # a folder: most seconds before rows reach the file
    inference_log_upload_s: float = Field(60.0, gt=0)  # S3: most seconds between uploads
    # a row reaches the file before its answer leaves (a folder log only): a killed worker loses none
    log_durable: bool = False
