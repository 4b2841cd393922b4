"""A request of the OpenAI-compatible API as it ended, for the hosting service's log:
:mod:`llmops.llm.openai_api` fills an :class:`AnsweredRequest` while it generates and hands it to
the service's ``on_answered`` callback once, when the answer is sent, when generation fails, or
when the client goes away (streaming or not)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from opentelemetry import trace

from llmops.llm.types import Backend, Completion, SamplingParams
from llmops.tracing import FIRST_TOKEN, finish

log = logging.getLogger(__name__)

CLIENT_GONE = "client_disconnected"  # the finish reason of a request whose client went away


@dataclass
class AnsweredRequest:
    """One request as it ended, for the hosting service's log (``openai_app``'s ``on_answered``)."""

    request_id: str  # the completion's id, which the client got
    route: str
    stream: bool
    prompt: str  # what the model was given: chat messages rendered by its template
    backend: Backend  # the backend that answered: the service knows which release it is
    prompt_tokens: int | None = None
    # the request as asked, for a shadow challenger to answer it again (llmops.shadow): the chat
    # messages (None: a text completion, whose prompt is ``prompt``) and the sampling settings
    messages: list[dict[str, str]] | None = None
    params: SamplingParams | None = None
    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None  # perf_counter at the first piece of text
    pieces: list[str] = field(default_factory=list)
    done: Completion | None = None
    status: int = 200
    error: str | None = None
    span: trace.Span = trace.INVALID_SPAN  # its ``generate`` span (llmops.tracing), ended by report()

    def piece(self, text: str) -> None:
        if self.first_token is None:
            self.first_token = time.perf_counter()
            self.span.add_event(FIRST_TOKEN)
        self.pieces.append(text)

    @property
    def answer(self) -> str:
        return self.done.text if self.done is not None else "".join(self.pieces)

    @property
    def finish_reason(self) -> str | None:
        if self.done is not None:
            return self.done.finish_reason
        return CLIENT_GONE if self.status == 499 else None


def report(on_answered: Callable[[AnsweredRequest], None] | None, answered: AnsweredRequest) -> None:
    """End ``answered``'s span, and hand it to the service's callback; a failure there is
    logged, never raised."""
    done, first = answered.done, answered.first_token
    finish(answered.span, answered.error, status=answered.status,
           output_tokens=done.completion_tokens if done else None,
           finish_reasons=[answered.finish_reason] if answered.finish_reason else None,
           time_to_first_token=round(first - answered.started, 6) if first else None)  # fmt: skip
    if on_answered is None:
        return
    try:
        on_answered(answered)
    except Exception:  # logging must never fail an answer
        log.exception("could not log request %s", answered.request_id)


async def reported(
    events: AsyncIterator[str],
    answered: AnsweredRequest,
    on_answered: Callable[[AnsweredRequest], None] | None,
) -> AsyncIterator[str]:
    """``events``, reported to ``on_answered`` when the stream ends: at ``[DONE]``, on a failure,
    or when the client goes away (the server stops iterating: a 499, ``client_disconnected``)."""
    finished = False
    try:
        async for event in events:
            yield event
        finished = True
    except Exception as exc:
        answered.status, answered.error = 500, f"generation failed: {type(exc).__name__}: {exc}"
        raise
    finally:
        if not finished and answered.status == 200 and answered.done is None:
            answered.status, answered.error = 499, "client disconnected"
        report(on_answered, answered)
