"""Errors a user can fix, shown by Metaflow as a headline and a message, never as a traceback.

Metaflow prints a ``MetaflowException`` as its headline and message, and any other exception as
"Internal error" with the whole traceback. The core raises :class:`llmops.errors.LlmopsError`
and knows nothing of Metaflow, so the two meet here, where a flow runs:

- ``@user_errors`` on a FlowSpec wraps every step: an ``LlmopsError`` from step code (bad data, a
  bad parameter, a missing release) ends the task as a :class:`UserError`;
- ``gate_policy_parser`` and ``training_config_parser`` parse the flows' Configs: a bad file stops
  the run before it starts, the same way.

Metaflow loads this module with ``import metaflow`` (the names above are top-level plugins), so it
imports nothing from llmops until an error or a Config needs it.
"""

from collections.abc import Callable
from typing import Any

from metaflow.exception import MetaflowException
from metaflow.user_decorators.user_flow_decorator import FlowMutator
from metaflow.user_decorators.user_step_decorator import UserStepDecorator


class UserError(MetaflowException):
    """An ``LlmopsError`` as Metaflow shows it: the error's kind as the headline, its message (which
    names the field and the fix) below."""

    def __init__(self, error: Exception) -> None:
        self.headline = type(error).__name__
        super().__init__(str(error))


def _is_user_error(exc: BaseException | None) -> bool:
    if exc is None:
        return False
    from llmops.errors import LlmopsError

    return isinstance(exc, LlmopsError)


class ShowUserErrors(UserStepDecorator):
    """Around one step: an ``LlmopsError`` leaves it as a :class:`UserError`; anything else as it was
    (a bug keeps its traceback)."""

    _decorator_name = "user_errors"  # how `show` and the step's decorator list name it

    def post_step(self, step_name, flow, exception=None):
        if _is_user_error(exception):
            return UserError(exception), None
        return exception, None


class user_errors(FlowMutator):
    """
    Show every ``LlmopsError`` a step raises as a Metaflow headline and one message.

    Put it on the FlowSpec; it wraps each step in :class:`ShowUserErrors`. Without it, an error
    the user can fix (invalid data, a parameter out of range) prints as "Internal error" with a
    traceback around the message.
    """

    def pre_mutate(self, mutable_flow) -> None:
        for _, step in mutable_flow.steps:
            step.add_decorator(ShowUserErrors, duplicates=step.IGNORE)


def _parsed(parse: Callable[[str], dict[str, Any]], text: str) -> dict[str, Any]:
    try:
        return parse(text)
    except Exception as exc:
        if _is_user_error(exc):
            raise UserError(exc) from None
        raise


def gate_policy_parser(text: str) -> dict[str, Any]:
    """Config parser for a gate policy (``Config("policy", parser=gate_policy_parser)``): the
    checked policy as a plain dict, or a :class:`UserError` naming the field."""
    from llmops.gates import parse_policy_config

    return _parsed(parse_policy_config, text)


def training_config_parser(text: str) -> dict[str, Any]:
    """Config parser for a fine-tune's training settings, as :func:`gate_policy_parser`."""
    from llmops.llm.training_config import parse_training_config_for_metaflow

    return _parsed(parse_training_config_for_metaflow, text)
