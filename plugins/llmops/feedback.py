"""What a RAG or LLM service keeps of its requests: their rows in the inference log, the ids it
answered, and the feedback users give on them (``POST /feedback``).

A rating names a request by the id its answer carried. The service keeps the ids it answered in
a bounded index (:class:`AnsweredIndex`, the newest 100,000 of the last
``$LLMOPS_FEEDBACK_WINDOW_DAYS`` days), rebuilt at start from the log's rows of that window, so a
restart loses none; an id it does not hold is a 404 naming it. Feedback rows are appended beside
the request rows, and a second feedback on one request replaces the first for every reader
(:func:`llmops.request_log.latest_feedback`). A shadow challenger's rows (:mod:`llmops.shadow`)
share the champion's request ids but are never rated: feedback rates the answer the client got.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from starlette.responses import JSONResponse

from llmops.inference_log import CHAMPION_ROLE, is_champion
from llmops.request_log import REQUEST_KINDS, RequestLogSettings, feedback_row, row_time, store_rows
from llmops.tracing import span

if TYPE_CHECKING:
    from llmops.inference_log import InferenceLogger

MAX_CORRECTION_CHARS = 4000
MAX_COMMENT_CHARS = 2000
UNKNOWN_REQUEST = "unknown_request_id"  # the 404's code: tests/fuzz.py excuses it


def _not_a_bool(value: Any) -> Any:
    if isinstance(value, bool):  # JSON true would pass as 1: a rating is a number
        raise ValueError("must be 1 or -1, not a boolean")
    return value


class Feedback(BaseModel):
    """``POST /feedback``: a rating of one answer, and optionally what it should have said."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
    rating: Annotated[Literal[1, -1], BeforeValidator(_not_a_bool)]  # 1: good, -1: bad
    correction: str | None = Field(None, max_length=MAX_CORRECTION_CHARS)
    comment: str | None = Field(None, max_length=MAX_COMMENT_CHARS)


class FeedbackReceipt(BaseModel):
    request_id: str
    model_version: str | None  # the release that answered the rated request
    rating: int


@dataclass(frozen=True)
class Answered:
    at: float  # epoch seconds
    model_version: str | None


class AnsweredIndex:
    """The request ids answered within ``window_days``, at most ``capacity`` (the oldest go first).
    Safe to share between a service's request threads."""

    def __init__(self, window_days: float, capacity: int = 100_000) -> None:
        self.window_s = window_days * 86_400
        self.capacity = capacity
        self._ids: OrderedDict[str, Answered] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, request_id: str, model_version: str | None, at: float | None = None) -> None:
        with self._lock:
            self._ids[request_id] = Answered(time.time() if at is None else at, model_version)
            self._ids.move_to_end(request_id)
            while len(self._ids) > self.capacity:
                self._ids.popitem(last=False)

    def get(self, request_id: str, now: float | None = None) -> Answered | None:
        """What answered ``request_id``, or None: not answered here, or longer ago than the window."""
        with self._lock:
            found = self._ids.get(request_id)
        if found is None or found.at < (time.time() if now is None else now) - self.window_s:
            return None
        return found

    def rebuild(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Add the answered requests among ``rows`` (oldest first); returns how many."""
        added = 0
        for row in rows:
            moment = row_time(row)
            if row.get("kind") not in REQUEST_KINDS or row.get("status", 200) != 200 or moment is None:
                continue
            if not is_champion(row):  # a challenger's answer to the same request: not what was rated
                continue
            self.add(str(row["request_id"]), row.get("model_version"), moment.timestamp())
            added += 1
        return added


class RequestLog:
    """A service's request rows and feedback, written through ``logger`` under ``model``.

    Parameters
    ----------
    logger : InferenceLogger
        The log of the served release's name; the rows of the window are read back from its store.
    model : str
        What the rows call the model (the release name, or the served name of a folder model).
    settings : RequestLogSettings, optional
        Default: read from the environment now (``LLMOPS_LOG_TEXT``, ``LLMOPS_FEEDBACK_WINDOW_DAYS``).
    capacity : int
        Most request ids kept for feedback.
    """

    def __init__(
        self,
        logger: InferenceLogger,
        model: str,
        settings: RequestLogSettings | None = None,
        capacity: int = 100_000,
    ) -> None:
        from llmops.request_log import request_log_settings

        self.logger, self.model = logger, model
        self.settings = settings or request_log_settings()
        self.index = AnsweredIndex(self.settings.feedback_window_days, capacity)
        since = datetime.now(timezone.utc) - timedelta(days=self.settings.feedback_window_days)
        self.index.rebuild(store_rows(logger.store, since, kinds=REQUEST_KINDS, roles=[CHAMPION_ROLE]))

    @property
    def keep_text(self) -> bool:
        return self.settings.log_text

    def request(self, row: dict[str, Any]) -> None:
        """Log a request row; an answered one (status 200) can be rated from now on."""
        with span("log", request_id=row["request_id"]):
            self.logger.log([row])
        if row.get("status", 200) == 200:
            self.index.add(row["request_id"], row.get("model_version"))

    def shadow(self, row: dict[str, Any]) -> None:
        """Log a shadow challenger's row (``role: "shadow"``); it is never rated."""
        self.logger.log([row])

    def feedback(self, body: Feedback) -> FeedbackReceipt | JSONResponse:
        """Log ``body`` beside the request it rates; a 404 naming the id when this service did
        not answer it within the window."""
        answered = self.index.get(body.request_id)
        if answered is None:
            days = f"{self.settings.feedback_window_days:g}"
            error = (f"request_id: {body.request_id!r} was not answered by this service in the last "
                     f"{days} days")  # fmt: skip
            return JSONResponse({"error": error, "code": UNKNOWN_REQUEST}, status_code=404)
        self.logger.log([feedback_row(request_id=body.request_id, model=self.model,
                                      model_version=answered.model_version, rating=body.rating,
                                      correction=body.correction, comment=body.comment)])  # fmt: skip
        return FeedbackReceipt(request_id=body.request_id, model_version=answered.model_version,
                               rating=body.rating)  # fmt: skip


def document_feedback(doc: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document says /feedback answers 404 for a request id it does not know."""
    from llmops.openapi_doc import ERROR_RESPONSE

    responses = doc.get("paths", {}).get("/feedback", {}).get("post", {}).get("responses")
    if responses is not None:
        responses["404"] = {
            "description": "No request with this id was answered by this service within the feedback window",
            **ERROR_RESPONSE,
        }
    return doc
