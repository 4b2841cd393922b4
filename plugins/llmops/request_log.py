"""The rows the RAG and LLM services write to the inference log, and how they are read back.

One row per request, beside the classifier's rows (which have no ``kind``) and in the same files
(``llmops.inference_log``): ``kind`` is ``rag_request`` (services/rag.py), ``llm_request``
(services/llm.py) or ``feedback`` (``POST /feedback`` of either; :mod:`llmops.feedback`). Every
row keeps what the tabular monitor reads (``request_id``, ``row``, ``timestamp``, ``model``,
``model_version``); docs/serving.md lists the rest, field by field.

A request row says who answered it: ``role`` is ``"champion"`` (the answer the client got; a row
without a role reads as the champion's) or ``"shadow"`` (a challenger's answer to the same request,
:mod:`llmops.shadow`: the same ``kind`` and ``request_id``, the challenger's ``model`` and
``model_version`` and, for RAG, its ``versions``; its own latency, status and error). Shadow rows
are never traffic: the monitors count champion rows only (:func:`champion_rows`), and feedback
rates the champion's answer.

Text (a question, a prompt, an answer) is logged as itself and as its SHA-256 and length; with
``LLMOPS_LOG_TEXT=false`` only the hash and the length are, so a log that must not hold what
users typed can still tell repeated questions apart and measure their drift in length. The
feedback a user writes (a correction, a comment) is kept either way: it is given to be read.
Nothing from the request's headers is ever logged.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from llmops.inference_log import CHAMPION_ROLE, SHADOW_ROLE, is_champion, row_role, utc_now
from llmops.settings import settings_from_env

if TYPE_CHECKING:
    from llmops.storage import Store

RAG_REQUEST, LLM_REQUEST, FEEDBACK = "rag_request", "llm_request", "feedback"
REQUEST_KINDS = frozenset({RAG_REQUEST, LLM_REQUEST})
Role = Literal["champion", "shadow"]
ROLES = (CHAMPION_ROLE, SHADOW_ROLE)


class RequestLogSettings(BaseModel):
    """What the RAG and LLM services log, and how far back feedback may rate a request."""

    log_text: bool = True  # False: hashes and lengths instead of question, prompt and answer text
    feedback_window_days: float = Field(7.0, gt=0)  # a request older than this cannot be rated


def request_log_settings() -> RequestLogSettings:
    """``$LLMOPS_LOG_TEXT`` and ``$LLMOPS_FEEDBACK_WINDOW_DAYS``, read now."""
    return settings_from_env(RequestLogSettings)


def sha256_hex(text: str) -> str:
    """The hex SHA-256 of ``text`` in UTF-8 (surrogates a JSON body may carry are replaced)."""
    return hashlib.sha256(text.encode("utf-8", errors="replace")).hexdigest()


def text_fields(name: str, text: str | None, keep_text: bool) -> dict[str, Any]:
    """``{name, name_sha256, name_chars}``: the text (None unless ``keep_text``), its hash and its
    length; all None when there is no text (a /retrieve has no answer)."""
    if text is None:
        return {name: None, f"{name}_sha256": None, f"{name}_chars": None}
    return {name: text if keep_text else None, f"{name}_sha256": sha256_hex(text), f"{name}_chars": len(text)}


def elapsed_ms(since: float, until: float | None = None) -> float:
    """Milliseconds between two ``time.perf_counter()`` readings (``until`` default: now)."""
    return round(((time.perf_counter() if until is None else until) - since) * 1000, 1)


def one_line(error: BaseException | str | None) -> str | None:
    """An error as the one line a row holds."""
    if error is None:
        return None
    text = str(error) or type(error).__name__
    return " ".join(text.split())[:500]


class LoggedSource(BaseModel):
    source: str  # the document's path in the corpus
    chunk: int | str  # the chunk's position in it
    score: float


class _Row(BaseModel):
    request_id: str
    row: int = 0
    timestamp: str = Field(default_factory=utc_now)
    model: str
    model_version: str | None


class _Answered(_Row):
    """What a request row holds besides its kind's own fields."""

    role: Role = CHAMPION_ROLE  # "shadow": a challenger's answer to the same request (llmops.shadow)
    route: str
    answer: str | None
    answer_sha256: str | None
    answer_chars: int | None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    latency_ms: dict[str, float | None]
    status: int = 200
    error: str | None = None


class RagRequestRow(_Answered):
    kind: Literal["rag_request"] = RAG_REQUEST
    versions: dict[str, Any]
    question: str | None
    question_sha256: str
    question_chars: int
    sources: list[LoggedSource]
    top_score: float | None
    low_confidence: bool | None = None  # None: the release has no low-confidence threshold


class LlmRequestRow(_Answered):
    kind: Literal["llm_request"] = LLM_REQUEST
    stream: bool
    prompt: str | None
    prompt_sha256: str
    prompt_chars: int


class FeedbackRow(_Row):
    kind: Literal["feedback"] = FEEDBACK
    rating: Literal[1, -1]
    correction: str | None = None
    comment: str | None = None


def rag_request_row(
    *,
    request_id: str,
    model: str,
    model_version: str | None,
    route: str,
    versions: Mapping[str, Any],
    question: str,
    sources: Iterable[LoggedSource | Mapping[str, Any]],
    answer: str | None,
    latency_ms: dict[str, float | None],
    keep_text: bool,
    status: int = 200,
    error: str | None = None,
    low_confidence_below: float | None = None,
    role: Role = CHAMPION_ROLE,
) -> dict[str, Any]:
    """A ``rag_request`` row; ``sources`` in rank order. ``low_confidence`` is set only for a release
    with a threshold (``low_confidence_below``)."""
    ranked = [s if isinstance(s, LoggedSource) else LoggedSource.model_validate(s) for s in sources]
    top = ranked[0].score if ranked else None
    low = None if low_confidence_below is None else (top is None or top < low_confidence_below)
    row = RagRequestRow(
        request_id=request_id, model=model, model_version=model_version, route=route, versions=dict(versions),
        sources=ranked, top_score=top, low_confidence=low, latency_ms=latency_ms, status=status, error=error,
        role=role, **text_fields("question", question, keep_text), **text_fields("answer", answer, keep_text),
    )  # fmt: skip
    return row.model_dump()


def llm_request_row(
    *,
    request_id: str,
    model: str,
    model_version: str | None,
    route: str,
    stream: bool,
    prompt: str,
    answer: str | None,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    finish_reason: str | None,
    latency_ms: dict[str, float | None],
    keep_text: bool,
    status: int = 200,
    error: str | None = None,
    role: Role = CHAMPION_ROLE,
) -> dict[str, Any]:
    """An ``llm_request`` row: ``prompt`` is the text the model was given (chat messages rendered)."""
    row = LlmRequestRow(
        request_id=request_id, model=model, model_version=model_version, route=route, stream=stream,
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, finish_reason=finish_reason,
        latency_ms=latency_ms, status=status, error=error, role=role,
        **text_fields("prompt", prompt, keep_text), **text_fields("answer", answer, keep_text),
    )  # fmt: skip
    return row.model_dump()


def feedback_row(
    *,
    request_id: str,
    model: str,
    model_version: str | None,
    rating: Literal[1, -1],
    correction: str | None = None,
    comment: str | None = None,
) -> dict[str, Any]:
    """A ``feedback`` row; kept whole whatever ``LLMOPS_LOG_TEXT`` says (the user wrote it to be read)."""
    return FeedbackRow(request_id=request_id, model=model, model_version=model_version, rating=rating,
                       correction=correction, comment=comment).model_dump()  # fmt: skip


# ---- reading ------------------------------------------------------------------------------


def read_rows(
    root: Path | str | None,
    model_name: str,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    kinds: Iterable[str | None] | None = None,
    roles: Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """Every row of ``model_name``'s log (``root``: a folder or ``s3://``; default the log root)
    with ``since <= timestamp < until``, as written (nested fields whole, unlike
    :func:`llmops.inference_log.read_log`'s frame), oldest first; only ``kinds`` when given
    (``None`` in ``kinds``: the rows without a kind, the classifier's), only the rows of ``roles``
    when given (``"champion"``, ``"shadow"``; a feedback row counts as the champion's)."""
    from llmops.inference_log import _model_store

    return store_rows(_model_store(root, model_name), since, until, kinds, roles)


def store_rows(
    store: Store,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    kinds: Iterable[str | None] | None = None,
    roles: Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """:func:`read_rows` of one model's log store (an ``InferenceLogger``'s ``store``)."""
    from llmops.inference_log import _DAY, _as_utc, _read_objects

    start, end = _as_utc(since), _as_utc(until)
    first_day = start.strftime("%Y-%m-%d") if start else ""
    last_day = end.strftime("%Y-%m-%d") if end else "9999-12-31"
    days = [d for d in store.folders() if _DAY.match(d) and first_day <= d <= last_day]
    wanted = set(kinds) if kinds is not None else None
    cast = set(roles) if roles is not None else None
    rows = []
    for row in _read_objects(store, days):
        moment = row_time(row)
        if (wanted is not None and row.get("kind") not in wanted) or moment is None:
            continue
        if cast is not None and row_role(row) not in cast:
            continue
        if (start is None or moment >= start) and (end is None or moment < end):
            rows.append((moment, row))
    rows.sort(key=lambda pair: pair[0])  # stable: rows of one moment keep their order in the files
    return [row for _, row in rows]


def row_time(row: Mapping[str, Any]) -> datetime | None:
    """The row's timestamp as a UTC datetime (None when it has none that parses)."""
    try:
        return datetime.fromisoformat(str(row.get("timestamp"))).astimezone(timezone.utc)
    except ValueError:
        return None


def champion_rows(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The rows that are not a shadow challenger's: the traffic the service answered (requests
    and feedback). Every monitor counts these only."""
    return [row for row in rows if is_champion(row)]


def latest_feedback(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The feedback that stands for each rated request id: the latest ``feedback`` row (a second
    feedback replaces the first; of two at the same moment, the one written last). Rows of other
    kinds are skipped, so a whole log can be passed."""
    latest: dict[str, tuple[datetime, dict[str, Any]]] = {}
    for row in rows:
        if row.get("kind") != FEEDBACK or not row.get("request_id"):
            continue
        moment = row_time(row) or datetime.min.replace(tzinfo=timezone.utc)
        seen = latest.get(row["request_id"])
        if seen is None or moment >= seen[0]:
            latest[row["request_id"]] = (moment, dict(row))
    return {request_id: row for request_id, (_, row) in latest.items()}
