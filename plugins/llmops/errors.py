"""The errors llmops raises for things a user can fix, and messages that name the field.

:class:`LlmopsError` is the base of every such error (bad input, a missing version, a refused
setting): the CLI and the flows show its message, never a traceback. Each module's error also
keeps the builtin it always was (``ValueError``, ``LookupError``), so callers that catch those
still do.
"""

from __future__ import annotations

from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class LlmopsError(Exception):
    """A problem the user can fix; the message names the field or the thing and says what is wrong."""


class ParameterError(LlmopsError, ValueError):
    """A flow or command parameter that cannot be used (``--k: must be between 1 and 50``), where no
    module owns the value: a module's own error names a value it owns."""


def field_problems(exc: ValidationError) -> str:
    """``questions.0.reference: Field required; k: ...``: each problem with the path to its field."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors())


def parse_yaml_model(text: str, model: type[M], source: str, error: type[Exception]) -> M:
    """A YAML mapping validated as ``model``; ``error`` names ``source`` and every bad field."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{source}: not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise error(f"{source}: expected a mapping at the top level")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise error(f"{source}: {field_problems(exc)}") from None
